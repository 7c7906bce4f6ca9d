from maild.parse import dedup_key, detect_language, message_ids, parse
from tests.conftest import make_mail


def test_ids_and_addresses_are_normalised():
    raw = make_mail(frm="=?utf-8?q?Jos=C3=A9?= <JOSE@Cliente.ES>", message_id="abc@x",
                    in_reply_to="<p@x>", references="<r1@x>  <p@x>")
    p = parse(raw)
    assert p.message_id == "abc@x"
    assert p.from_addr == "jose@cliente.es" and p.from_name == "José"
    assert p.references == ("r1@x", "p@x")
    assert p.thread_ids == ("p@x", "r1@x")


def test_dedup_key_uses_message_id_else_bytes():
    assert dedup_key(make_mail(message_id="m@x"))[0] == "mid:m@x"
    raw = b"From: a@b\r\nSubject: x\r\n\r\nbody\r\n"
    assert dedup_key(raw)[0].startswith("sha:")
    assert dedup_key(raw) == dedup_key(raw)
    assert dedup_key(raw) != dedup_key(raw + b"x")


def test_subject_header_values_are_one_line():
    p = parse(b"From: a@b.c\r\nSubject: =?utf-8?q?a=0D=0Abcc=3A_x?=\r\n\r\nhi\r\n")
    assert "\n" not in p.subject and "\r" not in p.subject


def test_html_only_mail_gets_a_text():
    raw = (b"From: a@b.c\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
           b"<p>Hola <b>equipo</b></p><script>alert(1)</script><p>segunda</p>\r\n")
    p = parse(raw)
    assert "Hola equipo" in p.text and "segunda" in p.text and "alert" not in p.text


def test_message_ids_tolerates_bare_ids():
    assert message_ids("<a@b> <c@d>") == ("a@b", "c@d")
    assert message_ids("bare@id") == ("bare@id",)
    assert message_ids("") == ()


def test_language_detection():
    assert detect_language("Buenos días, tengo una consulta sobre la factura", "") == "es"
    assert detect_language("Bom dia, tenho uma dúvida sobre a fatura, obrigado", "") == "pt"
    assert detect_language("Hello, I have a question about the invoice", "") == "en"
    assert detect_language("12345", "", default="pt") == "pt"
