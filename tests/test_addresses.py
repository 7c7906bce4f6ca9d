from maild import addresses
from tests.conftest import SECRET


def test_signed_reply_address_round_trips(settings):
    addr = addresses.reply_address(settings, 42)
    local, _, domain = addr.partition("@")
    assert domain == "example.org" and local.startswith("consultas+t42.")
    assert addresses.classify(settings, addr) == addresses.Local("ticket", number=42)
    # MTAs may change the case of a local part.
    assert addresses.classify(settings, addr.upper()) == addresses.Local("ticket", number=42)


def test_tampered_or_moved_signature_names_nothing(settings):
    addr = addresses.reply_address(settings, 42)
    sig = addr.split(".", 1)[1].split("@")[0]
    assert addresses.classify(settings, f"consultas+t43.{sig}@example.org").kind == "support"
    flipped = sig[:-1] + ("a" if sig[-1] != "a" else "b")
    assert addresses.classify(settings, f"consultas+t42.{flipped}@example.org").kind == "support"
    other = settings.model_copy(update={"secret": SECRET + b"x"})
    assert addresses.classify(other, addr).kind == "support"


def test_bounce_and_category_addresses(settings):
    b = addresses.bounce_address(settings, 7)
    assert addresses.classify(settings, b) == addresses.Local("bounce", number=7)
    # a ticket signature is not a bounce signature
    assert addresses.classify(settings, b.replace("+b7.", "+t7.")).kind == "support"
    assert addresses.classify(settings, "consultas+04@example.org") == addresses.Local("category", category="04")
    assert addresses.classify(settings, "consultas+99@example.org").kind == "support"
    assert addresses.classify(settings, "consultas@example.org").kind == "support"
    assert addresses.classify(settings, "consultas@other.org") is None
    assert addresses.classify(settings, "ventas@example.org") is None


def test_never_send_to_robot_addresses():
    for a in ("MAILER-DAEMON@x.org", "postmaster@x.org", "no-reply@x.org", "noreply@x.org",
              "do-not-reply@x.org", "bounces+123@x.org"):
        assert addresses.never_send_to(a), a
    assert not addresses.never_send_to("ana@cliente.es")
