"""WUS protocol code shared by the ingress koppelvlak (adapters/wus/) and the outbound
push channel (routing/afleveren/wus.py): the SOAP 1.1 + WS-Addressing envelope
(:mod:`digipoort.wus.soap`) and the WS-Security profile — exclusive c14n, signing and
verification (:mod:`digipoort.wus.wsprofile`, ``c14n``, ``wssign``, ``wsverify``). Pure
functions, no I/O (docs/wus-security.md)."""
