"""The portal: supplier portal, Aansluit Suite, recipients' inbox, operator console and the
REST API (``/api/v1``), one ``portal`` component on its own mutual-TLS port.

Pages (:mod:`portal.pages`) and the API (:mod:`portal.api`) call the same service
functions (:mod:`portal.service`); every query is scoped to the caller
(:mod:`portal.identity`). See docs/portal.md.
"""
