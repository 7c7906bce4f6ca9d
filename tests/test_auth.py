"""Who counts as staff: DKIM aligned with From, or the topmost trusted Authentication-Results."""

from maild.auth import aligned, authenticate, verify_dkim, verify_trusted_relay
from maild.parse import parse
from tests.conftest import make_mail
from tests.dkimkeys import dns_for, sign

STAFF = "Técnico <tec@example.org>"


def test_alignment_is_relaxed_but_not_sideways():
    assert aligned("example.org", "example.org")
    assert aligned("example.org", "mail.example.org")
    assert not aligned("mail.example.org", "example.org")
    assert not aligned("evil.org", "example.org")
    assert not aligned("", "example.org")


def test_valid_aligned_dkim_signature_authenticates(settings):
    raw = sign(make_mail(frm=STAFF), "example.org")
    assert verify_dkim(raw, "tec@example.org", dns_for("example.org")).ok
    assert authenticate(settings, parse(raw), dns_for("example.org")).ok


def test_forgeries_fail(settings):
    dns = dns_for("example.org", "evil.org")
    # no signature at all
    assert not authenticate(settings, parse(make_mail(frm=STAFF)), dns).ok
    # a valid signature, but by another domain
    assert not authenticate(settings, parse(sign(make_mail(frm=STAFF), "evil.org")), dns).ok
    # a signature by the right domain, body altered afterwards
    raw = sign(make_mail(frm=STAFF, body="#close\nHecho."), "example.org")
    tampered = raw.replace(b"Hecho.", b"Hecho!")
    assert tampered != raw
    v = authenticate(settings, parse(tampered), dns)
    assert not v.ok and "body hash mismatch" in v.reason
    # key not published
    assert not authenticate(settings, parse(sign(make_mail(frm=STAFF), "example.org")), dns_for("evil.org")).ok


def test_trusted_relay_accepts_topmost_trusted_header_only():
    trusted = ["mx.example.org"]
    frm = "tec@example.org"
    ok_dkim = "mx.example.org; dkim=pass header.d=example.org"
    ok_auth = "mx.example.org; auth=pass smtp.auth=tec@example.org"
    assert verify_trusted_relay((ok_dkim,), frm, trusted).ok
    assert verify_trusted_relay((ok_auth,), frm, trusted).ok
    # from a host we do not trust
    assert not verify_trusted_relay(("mx.evil.org; dkim=pass header.d=example.org",), frm, trusted).ok
    # our border said none/fail on top; the sender's own "pass" lower down does not count
    top = "mx.example.org; dkim=none; auth=none"
    assert not verify_trusted_relay((top, ok_dkim), frm, trusted).ok
    # an untrusted header above a trusted pass does not hide it
    assert verify_trusted_relay(("mx.evil.org; dkim=fail", ok_dkim), frm, trusted).ok
    # pass, but for another domain or another user
    assert not verify_trusted_relay(("mx.example.org; dkim=pass header.d=evil.org",), frm, trusted).ok
    assert not verify_trusted_relay(("mx.example.org; auth=pass smtp.auth=eve@example.org",), frm, trusted).ok
    assert not verify_trusted_relay((ok_dkim,), frm, []).ok


def test_staff_auth_setting_limits_the_methods(make_settings):
    only_dkim = make_settings(security={"staff_auth": ["dkim"]})
    raw = make_mail(frm=STAFF, extra={"Authentication-Results": "mx.example.org; dkim=pass header.d=example.org"})
    assert not authenticate(only_dkim, parse(raw), dns_for("example.org")).ok
    both = make_settings()
    assert authenticate(both, parse(raw), dns_for("example.org")).ok
