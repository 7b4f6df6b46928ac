"""What the HTTP front ends (``app/api``, ``app/v2/rest.py``) share: body reading under the
byte limits, dependencies, the disconnect watch and the ``{"error"}`` routes. It imports no
front end; its errors are the protocol-free ones of ``app.inference.errors``."""
