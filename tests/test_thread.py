"""Threading is a pure function: no database, no sockets."""

from maild.addresses import reply_address
from maild.parse import parse
from maild.thread import Candidates, TaggedTicket, thread
from tests.conftest import make_mail

RCPT = ["consultas@example.org"]


def test_signed_address_wins_even_without_headers(settings):
    addr = reply_address(settings, 12)
    p = parse(make_mail(to=addr, subject="sin etiqueta"))
    assert thread(settings, p, [addr], Candidates()).ticket_id == 12
    # only in Cc, or only as the envelope recipient, is enough too
    p = parse(make_mail(extra={"Cc": addr}))
    assert thread(settings, p, RCPT, Candidates()).ticket_id == 12
    p = parse(make_mail())
    assert thread(settings, p, [addr], Candidates()).rule == "signed"


def test_tampered_signature_threads_nothing(settings):
    addr = reply_address(settings, 12).replace("+t12.", "+t13.")
    p = parse(make_mail(to=addr))
    assert thread(settings, p, [addr], Candidates()).ticket_id is None


def test_message_id_chain_uses_the_most_specific_known_id(settings):
    p = parse(make_mail(in_reply_to="<b@x>", references="<a@x> <b@x>"))
    th = thread(settings, p, RCPT, Candidates(known_ids={"a@x": 1, "b@x": 2}))
    assert (th.ticket_id, th.rule) == (2, "message-id")
    p = parse(make_mail(references="<zz@x> <a@x> <unknown@y>"))
    assert thread(settings, p, RCPT, Candidates(known_ids={"a@x": 1})).ticket_id == 1


def test_subject_tag_only_from_requester_watcher_or_staff(settings):
    tagged = TaggedTicket(5, "ana@cliente.es", frozenset({"jefe@cliente.es"}))
    subject = "RE: [OMIE #5] Problema"
    for frm, expected in [
        ("ana@cliente.es", 5),
        ("ANA@Cliente.es", 5),
        ("jefe@cliente.es", 5),
        ("intruso@malo.com", None),
    ]:
        p = parse(make_mail(frm=frm, subject=subject))
        assert thread(settings, p, RCPT, Candidates(tagged=tagged)).ticket_id == expected, frm
    p = parse(make_mail(frm="intruso@malo.com", subject=subject))
    assert thread(settings, p, RCPT, Candidates(tagged=tagged, sender_is_staff=True)).ticket_id == 5


def test_subject_tag_must_name_the_fetched_ticket(settings):
    tagged = TaggedTicket(5, "ana@cliente.es")
    p = parse(make_mail(subject="[OMIE #6] otra"))
    assert thread(settings, p, RCPT, Candidates(tagged=tagged)).ticket_id is None


def test_nothing_matches_new_ticket(settings):
    p = parse(make_mail())
    assert thread(settings, p, RCPT, Candidates()).rule == "new"
