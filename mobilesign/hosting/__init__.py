"""The server side of every mobilesign service: configuration (:mod:`.config`), the development
PKI (:mod:`.devpki`), caller identity and access policy (:mod:`.access`), the interceptor that
turns :class:`mobilesign.errors.Error` into a status (:mod:`.interceptor`), JSON logs with request
ids (:mod:`.logs`), the server lifecycle (:mod:`.serve`) and the entry point (:mod:`.entrypoint`).
Clients never import it."""
