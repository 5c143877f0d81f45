"""Read the audio an ``audio_url`` names (/stt/process, /v1/jobs): an http(s) URL or a path inside
the media directory. :func:`load_audio_url` is the one entry point both routes use.

Against server-side request forgery, a URL's host is resolved here and every address it resolves to
must be public (no private, loopback, link-local, multicast or reserved address) unless
``allow_private_urls`` is set. The connection then goes to the address that was checked (with the
original Host header and TLS server name), so a DNS answer that changes between check and connect
cannot redirect it; redirects are followed by hand and checked the same way. The body is streamed and
cut off at the upload limit.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx

from ..config import Settings
from ..errors import AudioTooLargeError, EmptyAudioError, InvalidOptionsError, NotFoundError

__all__ = ["load_audio_url", "fetch_audio", "read_media_path", "check_address"]

_MAX_REDIRECTS = 3
_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


async def load_audio_url(audio_url: str, settings: Settings) -> bytes | Path:
    """The bytes an http(s) URL serves (at most the upload limit, public addresses only unless
    ``server.allow_private_urls``), or else the path of the file it names in ``server.media_dir``.
    A path is not read here: the decoder (or the job store) reads it and enforces the size limit."""
    if audio_url.lower().startswith(("http://", "https://")):
        return await fetch_audio(
            audio_url,
            max_bytes=settings.limits.max_upload_bytes,
            allow_private=settings.server.allow_private_urls,
        )
    return read_media_path(audio_url, settings.server.media_dir)


def check_address(address: str) -> None:
    """InvalidOptionsError unless ``address`` is a public unicast IP."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_global or ip.is_multicast:
        raise InvalidOptionsError(
            f"audio_url resolves to a non-public address ({ip}); such URLs are refused "
            "(set MALSORI__SERVER__ALLOW_PRIVATE_URLS=true to allow them)",
            code="url_not_allowed",
        )


async def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidOptionsError(f"audio_url host {host!r} cannot be resolved: {exc}", code="url_unreachable") from None
    return sorted({info[4][0] for info in infos})


async def fetch_audio(url: str, *, max_bytes: int, allow_private: bool) -> bytes:
    """The bytes at ``url`` (http or https), at most ``max_bytes``."""
    async with httpx.AsyncClient(timeout=_TIMEOUT, follow_redirects=False, trust_env=False) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidOptionsError(
                    f"audio_url must be an http(s) URL or a path in the media directory, not {url!r}",
                    code="url_not_allowed",
                )
            host = parts.hostname
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:
                raise InvalidOptionsError(f"audio_url has an invalid port: {url!r}") from None
            addresses = await _resolve(host, port)
            if not addresses:
                raise InvalidOptionsError(f"audio_url host {host!r} resolves to no address", code="url_unreachable")
            if not allow_private:
                for address in addresses:
                    check_address(address)
            target = addresses[0]
            netloc = f"[{target}]:{port}" if ":" in target else f"{target}:{port}"
            pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
            host_header = host if parts.port is None else f"{host}:{parts.port}"
            request = client.build_request("GET", pinned, headers={"Host": host_header}, extensions={"sni_hostname": host})
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise InvalidOptionsError(
                    f"audio_url could not be fetched: {exc.__class__.__name__}: {exc}", code="fetch_failed"
                ) from None
            try:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    url = str(httpx.URL(url).join(location))
                    continue
                if response.status_code >= 400:
                    raise InvalidOptionsError(f"audio_url answered HTTP {response.status_code}", code="fetch_failed")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise AudioTooLargeError(
                        f"audio_url's file is {int(declared) / 1e6:.1f} MB, over the limit of {max_bytes / 1e6:.1f} MB"
                    )
                body = bytearray()
                try:
                    async for block in response.aiter_bytes():
                        body += block
                        if len(body) > max_bytes:
                            raise AudioTooLargeError(f"audio_url's file is over the limit of {max_bytes / 1e6:.1f} MB")
                except httpx.HTTPError as exc:
                    raise InvalidOptionsError(
                        f"audio_url could not be read: {exc.__class__.__name__}", code="fetch_failed"
                    ) from None
                if not body:
                    raise EmptyAudioError("audio_url returned an empty body")
                return bytes(body)
            finally:
                await response.aclose()
    raise InvalidOptionsError(f"audio_url redirected more than {_MAX_REDIRECTS} times", code="fetch_failed")


def read_media_path(value: str, media_dir: Path | None) -> Path:
    """The file ``value`` names (``file://`` URL, absolute, or relative to ``media_dir``), refusing any
    path that leaves ``media_dir`` (``..``, symbolic links) or any path at all when none is configured."""
    if media_dir is None:
        raise InvalidOptionsError(
            "local paths are not allowed: no media directory is configured (MALSORI__SERVER__MEDIA_DIR)",
            code="path_not_allowed",
        )
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", value)
    if scheme and scheme.group(1).lower() != "file":
        raise InvalidOptionsError(
            f"audio_url scheme {scheme.group(1)!r} is not supported; use http(s) or a media path", code="url_not_allowed"
        )
    raw = value[len("file://") :] if value.startswith("file://") else value
    if "\x00" in raw:
        raise InvalidOptionsError("audio_url contains a NUL byte", code="path_not_allowed")
    root = media_dir.resolve()
    candidate = Path(raw)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise InvalidOptionsError(f"audio_url {value!r} is outside the media directory", code="path_not_allowed")
    if not resolved.is_file():
        raise NotFoundError(f"no such file in the media directory: {value!r}")
    return resolved
