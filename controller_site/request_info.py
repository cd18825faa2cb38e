"""What every part of the controller needs to know about a request beyond its body."""

import ipaddress

from rest_framework.throttling import BaseThrottle


def client_ip(request) -> str | None:
    """The client's address as the login throttle sees it: REMOTE_ADDR, or the NUM_PROXIES-th
    address from the right of X-Forwarded-For behind trusted proxies."""
    if request is None:
        return None
    ident = BaseThrottle().get_ident(request)
    try:
        return str(ipaddress.ip_address((ident or "").strip()))
    except ValueError:
        # A proxy passed something that is not an address; keep the entry, without the address.
        return None
