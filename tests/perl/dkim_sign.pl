#!/usr/bin/perl
# Signs the message on stdin with Mail::DKIM::Signer (another system's signer, for the tests).
# usage: dkim_sign.pl KEYFILE DOMAIN SELECTOR [relaxed|simple] ; prints the signed message.
use strict;
use warnings;
use Mail::DKIM::Signer;
use Mail::DKIM::TextWrap;

my ($keyfile, $domain, $selector, $canon) = @ARGV;
$canon //= 'relaxed';
binmode STDIN;
binmode STDOUT;
my @lines;
while (<STDIN>) {
    s/\015?\012$/\015\012/;
    push @lines, $_;
}
my $dkim = Mail::DKIM::Signer->new(
    Algorithm => 'rsa-sha256',
    Method    => "$canon/$canon",
    Domain    => $domain,
    Selector  => $selector,
    KeyFile   => $keyfile,
    Headers   => 'from:to:cc:subject:date:message-id:in-reply-to:references',
);
$dkim->PRINT($_) for @lines;
$dkim->CLOSE;
print $dkim->signature->as_string, "\015\012", @lines;
