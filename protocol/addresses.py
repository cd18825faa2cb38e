"""Which network addresses are private: the rule the worker applies to its upstreams and the
controller to its webhook endpoints, so that neither can be pointed at an internal service
(a cloud metadata address, a database on the private network, the host itself).

No Django here: the worker loads without it.
"""

import ipaddress
import socket

# IPv6 ranges that carry an IPv4 address inside (6to4, Teredo, NAT64, IPv4-compatible) or are
# not for public unicast: a 2002:7f00:1:: would otherwise reach 127.0.0.1 through a 6to4 relay.
# Refused whole, whatever the address inside.
BLOCKED_V6 = tuple(
    ipaddress.ip_network(net)
    for net in ("2002::/16", "2001::/32", "64:ff9b::/96", "64:ff9b:1::/48", "::/96", "fc00::/7")
)

PRIVATE_KINDS = "private, loopback, link-local or reserved"


def is_private_address(address: str) -> bool:
    """True for any address that is not a public unicast one (private, loopback, reserved...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif any(ip in net for net in BLOCKED_V6):
            return True
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or not ip.is_global
    )


def private_address_of(host: str, port: int) -> str | None:
    """The first private address `host` resolves to, or None when every one is public (or the
    name does not resolve now: whoever connects later finds out). A name with one private
    address among public ones counts as private: a client may connect to any of them."""
    try:
        found = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return None
    for *_, peer in found:
        address = str(peer[0])
        if is_private_address(address):
            return address
    return None
