"""The reasons a revocation may give, apart from the crypto that carries them out (x509util): the
command line's help names them without importing cryptography."""

# RFC 5280's CRLReason codes of the reasons a revocation may give (pki.revocation_reasons()): those of an
# end-entity certificate that Let's Encrypt accepts too (0, 1, 3, 4, 5; cACompromise and aACompromise are
# about CAs, certificateHold is not final, privilegeWithdrawn is refused by it): the code goes to an ACME
# CA (RFC 8555 revokeCert), the name into a CRL entry
REVOCATION_REASONS = {"unspecified": 0, "keyCompromise": 1, "affiliationChanged": 3, "superseded": 4,
                      "cessationOfOperation": 5}
