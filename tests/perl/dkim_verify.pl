#!/usr/bin/perl
# An independent DKIM verifier (Mail::DKIM, Debian's libmail-dkim-perl) for the tests.
# Reads one message on stdin; the public keys come from the environment instead of DNS:
#   DKIM_KEYS="sel._domainkey.example.org=v=DKIM1; k=rsa; p=...;;next=..." (entries split on ";;")
# Prints "pass" (exit 0) or the result and its detail, one line per signature (exit 1).
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS;

my %keys;
for my $entry (split /;;/, $ENV{DKIM_KEYS} // '') {
    my ($name, $record) = split /=/, $entry, 2;
    $keys{lc $name} = $record if defined $record;
}
{
    no warnings 'redefine';
    *Mail::DKIM::DNS::query = sub {
        my ($domain, $type) = @_;
        my $record = $keys{lc $domain};
        $@ = defined $record ? 'NOERROR' : 'NXDOMAIN';
        return () unless defined $record && uc $type eq 'TXT';
        # a DNS TXT record holds strings of at most 255 octets
        my @chunks = unpack '(A255)*', $record;
        return (Net::DNS::RR->new(name => $domain, type => 'TXT', txtdata => \@chunks));
    };
}

my $dkim = Mail::DKIM::Verifier->new();
binmode STDIN;
while (<STDIN>) {
    s/\015?\012$/\015\012/;
    $dkim->PRINT($_);
}
$dkim->CLOSE;
my @sigs = $dkim->signatures;
print "no signature\n" and exit 1 unless @sigs;
my $ok = $dkim->result eq 'pass';
for my $sig (@sigs) {
    printf "%s d=%s s=%s%s\n", $sig->result, $sig->domain, $sig->selector,
        ($sig->result_detail ne $sig->result ? " (" . $sig->result_detail . ")" : "");
}
exit($ok ? 0 : 1);
