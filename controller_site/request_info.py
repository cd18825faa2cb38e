"""What every part of the controller needs to know about a request beyond its body."""

import ipaddress


def client_ip(request) -> str | None:
    """The client's address as the login throttle and the audit log see it: REMOTE_ADDR. The
    server (uvicorn) has already put there the address X-Forwarded-For gives when, and only
    when, the peer is a proxy listed in FORWARDED_ALLOW_IPS; the header itself is never read
    here, so a client that reaches the controller around the proxy cannot choose it."""
    if request is None:
        return None
    ident = request.META.get("REMOTE_ADDR")
    try:
        return str(ipaddress.ip_address((ident or "").strip()))
    except ValueError:
        # A proxy passed something that is not an address; keep the entry, without the address.
        return None
