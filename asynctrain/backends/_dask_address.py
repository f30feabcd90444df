"""Which Dask scheduler addresses DaskBackend connects to without being told it is safe."""

from __future__ import annotations

import ipaddress
import logging

from distributed.comm.addressing import parse_address, parse_host_port

from asynctrain._exceptions import ConfigError, ConfigTypeError

logger = logging.getLogger("asynctrain.dask")

_ENCRYPTED_OR_LOCAL = {"tls", "wss", "inproc"}  # inproc: this very process


def check_address(address: str, *, allow_insecure: bool) -> None:
    """Refuse a plain-text scheduler address off this machine unless explicitly allowed.

    A Dask scheduler runs whatever code its clients send, and plain TCP lets anyone on the
    path read or forge that traffic. Loopback addresses and ``tls://`` are accepted;
    anything else needs ``allow_insecure=True``, which logs a warning naming the address.

    Raises:
        ConfigError: a plain-TCP, non-loopback address without ``allow_insecure``, or
            something that is not a scheduler address.
        ConfigTypeError: ``address`` is not a string.

    Example:
        >>> check_address("tls://10.0.0.5:8786", allow_insecure=False)  # encrypted: fine
        >>> try:
        ...     check_address("tcp://10.0.0.5:8786", allow_insecure=False)
        ... except ConfigError as exc:
        ...     print("allow_insecure" in str(exc))
        True
    """
    if not isinstance(address, str):
        raise ConfigTypeError(
            f"address must be a string such as 'tls://host:8786', got {address!r}"
        )
    try:
        scheme, location = parse_address(address)
        local = scheme in _ENCRYPTED_OR_LOCAL or _is_loopback(parse_host_port(location)[0])
    except ValueError as exc:
        raise ConfigError(
            f"{address!r} is not a Dask scheduler address such as 'tls://host:8786'"
        ) from exc
    if local:
        return
    if not allow_insecure:
        raise ConfigError(
            f"refusing to connect to the Dask scheduler at {address!r} over plain {scheme}: "
            "anyone who can reach that port can run code on the cluster and read the data. "
            "Use 'tls://...' with security=distributed.Security(...), or pass "
            "allow_insecure=True on a network you trust"
        )
    logger.warning(
        "connecting to the Dask scheduler at %s over plain %s (allow_insecure=True): anyone "
        "who can reach it can run code on the cluster; prefer tls:// with Security",
        address,
        scheme,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False
