"""Afleveren in one room: everything that hands an envelope to its recipient.

* :mod:`routing.afleveren.schedule` — pure policy: backoff, retry window, circuit breaker;
* :mod:`routing.afleveren.deliverer` — the push loop over ``deliveries`` (claim, attempt,
  record 400/420/410, breaker per recipient);
* :mod:`routing.afleveren.channel` — the :class:`~routing.afleveren.channel.Channel`
  protocol every push channel implements: ``deliver(outgoing)`` → receipt | retry | refuse;
* one module per outbound channel: :mod:`~routing.afleveren.wus` (AfleverService push),
  :mod:`~routing.afleveren.smtp` (SMTP relay), :mod:`~routing.afleveren.ftp` (the ``/out/``
  directory a recipient collects over FTPS);
* :mod:`routing.afleveren.component` — the ``deliverer`` component wiring.

The ingress koppelvlakken (adapters/) do not deliver; endpoints a recipient calls
(Ophaalservice, zetStatus, the FTP session) stay there and call these functions.
"""
