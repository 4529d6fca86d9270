"""Import images from a URL list (``label<TAB>url`` per line) into the folder-per-label layout.

Downloads run in a bounded thread pool with a per-attempt time limit, retries with exponential
backoff on transient failures (timeouts, connection errors, HTTP 408/429/5xx), a size cap enforced
both on ``Content-Length`` and while streaming, and only ``http``/``https`` (redirects included).
A response is kept only if it decodes as an image of an allowed format within ``IngestConfig.limits``
(``core.images.decode_image``), whatever its URL or content type says; its file extension comes from the
decoded format. Non-ASCII URLs (an IDN host, a non-ASCII path) are sent IDNA- and percent-encoded.

Labels become folder names collision-free: a label that is already a safe name is its own folder; any other
(``a/b``, ``../x``, ``.``, a name too long for one path component, a name needing Unicode normalisation) gets
its sanitised form plus a short hash of the label, so two labels never share a folder. Names are shortened by
UTF-8 bytes, never above 255 per path component. The label -> folder mapping is in the report.

Layout of the output folder::

    <out>/<label>/<name>-<url hash>.<ext>   images, each written atomically (temp file + rename)
    <out>/.ingest-manifest.json            url -> file and SHA-256 of everything downloaded (resume)
    <out>/ingest-report.json               the last run's report

Broken URLs are expected: they are reported, not raised. Re-running skips URLs whose file is still
present with the recorded hash. Results are consumed in list order through a bounded window, so
which copy of duplicated content is kept does not depend on network timing, and memory stays
bounded.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import re
import socket
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from core.artifacts import atomic_write, atomic_write_json
from core.config import FILE_LIMITS, ImageLimits
from core.errors import ArtifactError, DatasetError, ImageLoadError
from core.images import content_hash, decode_image, printable, probe_image, read_image_file

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
Status = Literal["downloaded", "present", "failed", "duplicate"]

MANIFEST_NAME = ".ingest-manifest.json"
REPORT_NAME = "ingest-report.json"
ALLOWED_SCHEMES = ("http", "https")
#: Decoded format -> file extension; other formats are refused (the dataset scanner would skip them).
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
_UNSAFE = re.compile(r"[^\w.\-]+")
_CHUNK = 64 * 1024
#: Longest label folder, in UTF-8 bytes (a path component may have 255; room is left for the hash suffix).
MAX_FOLDER_BYTES = 120
#: Longest file name stem taken from a URL, in UTF-8 bytes (plus ``-<10 hex>.<ext>``).
MAX_STEM_BYTES = 100
#: Side JPEGs are decoded at to check them (draft mode: a 48 Mpx photo is checked at 1/8 of its size).
CHECK_DRAFT_SIZE = 256


@dataclass(frozen=True)
class IngestConfig:
    """How URL lists are downloaded.

    Attributes:
        workers: Downloads in flight at once.
        timeout: Seconds allowed per attempt, for connecting and for the whole body.
        retries: Extra attempts after a transient failure (timeout, connection error, HTTP 408/429/5xx).
        backoff: Seconds before the first retry; doubled before each further one.
        max_bytes: Largest response body accepted.
        max_redirects: Redirects followed per attempt (http/https targets only).
        user_agent: Sent with every request.
        limits: Size and pixel ceilings each image must meet (checked from its header before decoding).
    """

    workers: int = 8
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.5
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    user_agent: str = "similarity-workbench-import/1"
    limits: ImageLimits = FILE_LIMITS


@dataclass(frozen=True)
class UrlEntry:
    """One usable line of a URL list. ``folder`` is the label made safe as a folder name."""

    line: int
    label: str
    folder: str
    url: str


@dataclass(frozen=True)
class MalformedLine:
    """A line of a URL list that was not used, with why."""

    line: int
    text: str
    reason: str


@dataclass(frozen=True)
class UrlList:
    """A parsed URL list."""

    path: Path
    entries: tuple[UrlEntry, ...]
    malformed: tuple[MalformedLine, ...]


@dataclass(frozen=True)
class IngestItem:
    """What happened to one entry: downloaded, already present, failed (with reason) or duplicate."""

    line: int
    url: str
    label: str
    status: Status
    path: str = ""  # relative to the output folder
    reason: str = ""
    attempts: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class IngestReport:
    """Outcome of one import run."""

    list_path: Path
    out: Path
    seconds: float
    items: tuple[IngestItem, ...]
    malformed: tuple[MalformedLine, ...]
    #: ``(label, folder)`` for each label of the list, in first-seen order: where each label's images went.
    label_folders: tuple[tuple[str, str], ...] = ()

    def with_status(self, status: Status) -> tuple[IngestItem, ...]:
        """The items with ``status``, in list order."""
        return tuple(item for item in self.items if item.status == status)

    def counts(self) -> dict[str, int]:
        """Number of entries per outcome, plus malformed lines."""
        counts = {status: len(self.with_status(status)) for status in ("downloaded", "present", "failed", "duplicate")}
        return {**counts, "malformed": len(self.malformed)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "list": printable(str(self.list_path)),
            "out": printable(str(self.out)),
            "seconds": round(self.seconds, 3),
            "counts": self.counts(),
            "label_folders": {printable(label): folder for label, folder in self.label_folders},
            "items": [asdict(item) for item in self.items],
            "malformed": [asdict(item) for item in self.malformed],
        }


class DownloadError(Exception):
    """One attempt failed; ``transient`` failures are retried."""

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding has at most ``max_bytes`` bytes (whole characters)."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", "ignore")


def safe_name(text: str, fallback: str, max_bytes: int = MAX_FOLDER_BYTES) -> str:
    """A single, harmless path component made from ``text``, at most ``max_bytes`` UTF-8 bytes long.

    Separators, ``..``, control and shell-hostile characters become ``_``; leading dots and spaces are
    dropped (no hidden files, no ``.``/``..``); Unicode is NFC-normalised; empty results use ``fallback``.
    Different texts can give the same name: :func:`label_folder` makes folder names collision-free.
    """
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if _has_surrogates(text) else text
    text = unicodedata.normalize("NFC", text)
    text = _UNSAFE.sub("_", text).strip("._ ")
    text = truncate_utf8(re.sub(r"_+", "_", text), max_bytes).rstrip("._ ")
    return text or fallback


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def label_folder(label: str) -> str:
    """The folder of a label: the label itself when it is a safe name, otherwise its safe form plus a hash.

    ``a/b`` and ``a_b``, ``../x`` and ``x``, ``.`` and ``..``, or two long labels sharing their first bytes
    never share a folder; the result depends on the label alone, so reruns use the same folder.
    """
    safe = safe_name(label, "unlabelled")
    if safe == label:
        return safe
    digest = hashlib.sha256(label.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{safe}-{digest}"


def parse_url_list(path: str | Path) -> UrlList:
    """Read a URL list: ``label<TAB>url`` per line; blank lines and ``#`` comments are ignored.

    Malformed lines (no tab, empty label or URL, bad URL, scheme other than http/https, undecodable
    bytes) are returned with their line number and reason instead of stopping the import. Labels that
    are not safe folder names (``../x``, ``a/b``) get a distinct safe folder (see :func:`label_folder`).

    Raises:
        DatasetError: The file cannot be read.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"{printable(str(path))}: cannot read URL list ({err.strerror or err})") from err
    entries: list[UrlEntry] = []
    malformed: list[MalformedLine] = []
    label_of_folder: dict[str, tuple[str, int]] = {}
    for number, raw_line in enumerate(raw.splitlines(), start=1):
        if number == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
            raw_line = raw_line[3:]  # UTF-8 byte-order mark
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError:
            malformed.append(MalformedLine(number, raw_line.decode("utf-8", "replace"), "not valid UTF-8"))
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        reason = None
        fields = [field.strip(" ") for field in line.rstrip(" \r\n").split("\t")]  # an empty field is an empty field
        if len(fields) != 2:
            reason = f"expected label<TAB>url, found {len(fields)} tab-separated field(s)"
        elif not fields[0]:
            reason = "empty label"
        elif not fields[1]:
            reason = "empty URL"
        else:
            label, url = fields
            reason = _url_problem(url)
        if not reason:
            folder = label_folder(label)
            other, other_line = label_of_folder.setdefault(folder.casefold(), (label, number))
            if other != label:  # only a crafted label can meet another's hashed name
                reason = f"label folder {folder!r} is already used by label {other!r} (line {other_line})"
        if reason:
            malformed.append(MalformedLine(number, printable(stripped), reason))
            continue
        entries.append(UrlEntry(number, label, folder, url))
    return UrlList(path, tuple(entries), tuple(malformed))


def _url_problem(url: str) -> str | None:
    """Why ``url`` cannot be downloaded, or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as err:
        return f"invalid URL ({err})"
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        shown = f"'{parts.scheme}'" if parts.scheme else "none"
        return f"unsupported URL scheme {shown} (only http and https)"
    if not parts.hostname:
        return "URL has no host"
    if any(ch.isspace() for ch in url):
        return "URL contains whitespace"
    try:
        request_url(url)
    except ValueError as err:
        return f"invalid URL ({err})"
    return None


def request_url(url: str) -> str:
    """``url`` as sent on the wire: an internationalised host IDNA-encoded, non-ASCII path and query bytes
    percent-encoded (existing ``%XX`` escapes are kept).

    Raises:
        ValueError: The host cannot be IDNA-encoded.
    """
    parts = urllib.parse.urlsplit(url)
    if url.isascii():
        return url
    host = parts.hostname or ""
    try:
        ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError as err:
        raise ValueError(f"host {host!r} is not a valid internationalised domain name") from err
    if ":" in ascii_host:  # IPv6 literal
        ascii_host = f"[{ascii_host}]"
    netloc = ascii_host if parts.port is None else f"{ascii_host}:{parts.port}"
    if parts.username is not None:
        userinfo = urllib.parse.quote(parts.username, safe="%!$&'()*+,;=")
        if parts.password is not None:
            userinfo += ":" + urllib.parse.quote(parts.password, safe="%!$&'()*+,;=")
        netloc = f"{userinfo}@{netloc}"
    path = urllib.parse.quote(parts.path, safe="/%:@!$&'()*+,;=~")
    query = urllib.parse.quote(parts.query, safe="/?%:@!$&'()*+,;=~")
    fragment = urllib.parse.quote(parts.fragment, safe="/?%:@!$&'()*+,;=~")
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, query, fragment))


def file_stem(url: str) -> str:
    """File name stem for a URL: its last path segment made safe, plus a short hash of the URL.

    The hash keeps ``.../a/image.jpg`` and ``.../b/image.jpg`` apart and makes the name a pure
    function of the URL, so an interrupted download is replaced, not duplicated, on the next run.
    """
    segment = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    stem = segment.rsplit(".", 1)[0] if "." in segment.lstrip(".") else segment
    digest = hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{safe_name(stem, 'image', MAX_STEM_BYTES)}-{digest}"


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow at most ``max_redirections`` redirects, and only to http/https."""

    def __init__(self, max_redirects: int) -> None:
        super().__init__()
        # typeshed declares it a ClassVar, but urllib reads it per instance: one limit per opener
        self.max_redirections = max_redirects  # type: ignore[misc]

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            raise DownloadError(f"redirect to unsupported URL scheme '{scheme}' refused ({newurl})", transient=False)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(config: IngestConfig) -> urllib.request.OpenerDirector:
    # Only the handlers needed: no file://, ftp:// or data: handlers, so nothing but http(s) can be opened.
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        _SafeRedirects(config.max_redirects),
    ):
        opener.add_handler(handler)
    return opener


def _download_once(url: str, config: IngestConfig, opener: urllib.request.OpenerDirector) -> bytes:
    """The body of ``url`` within the time and size limits.

    Raises:
        DownloadError: With a one-line reason; ``transient`` when a retry may help.
    """
    deadline = time.monotonic() + config.timeout
    request = urllib.request.Request(
        request_url(url), headers={"User-Agent": config.user_agent, "Accept": "image/*,*/*;q=0.5"}
    )
    try:
        with opener.open(request, timeout=config.timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.strip().isdigit() and int(length) > config.max_bytes:
                raise DownloadError(
                    f"too large: Content-Length {int(length):,} bytes > limit {config.max_bytes:,}", transient=False
                )
            chunks, size = [], 0
            read = getattr(
                response, "read1", response.read
            )  # read1: return what has arrived, so the deadline is checked
            while True:
                if time.monotonic() > deadline:
                    raise DownloadError(f"timed out after {config.timeout:g} s (body too slow)", transient=True)
                chunk = read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > config.max_bytes:
                    raise DownloadError(f"too large: body exceeds limit of {config.max_bytes:,} bytes", transient=False)
                chunks.append(chunk)
            return b"".join(chunks)
    except DownloadError:
        raise
    except urllib.error.HTTPError as err:
        err.close()
        transient = err.code in (408, 429) or err.code >= 500
        raise DownloadError(f"HTTP {err.code} {err.reason}".strip(), transient) from err
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, DownloadError):
            raise reason from err
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise DownloadError(f"timed out after {config.timeout:g} s (no response)", transient=True) from err
        raise DownloadError(f"cannot connect ({reason})", transient=True) from err
    except TimeoutError as err:
        raise DownloadError(f"timed out after {config.timeout:g} s (no response)", transient=True) from err
    except (http.client.HTTPException, ConnectionError, OSError) as err:
        raise DownloadError(f"connection failed ({type(err).__name__}: {err})", transient=True) from err


@dataclass(frozen=True)
class _Fetched:
    data: bytes | None
    extension: str
    reason: str
    attempts: int


def _fetch(entry: UrlEntry, config: IngestConfig, opener: urllib.request.OpenerDirector) -> _Fetched:
    """Download with retries and check that the body decodes as an image (runs in a worker thread)."""
    attempts = 0
    while True:
        attempts += 1
        try:
            data = _download_once(entry.url, config, opener)
            break
        except DownloadError as err:
            if not err.transient or attempts > config.retries:
                suffix = f" (after {attempts} attempts)" if attempts > 1 else ""
                return _Fetched(None, "", f"{err}{suffix}", attempts)
            time.sleep(config.backoff * 2 ** (attempts - 1))
    try:
        header = probe_image(data, name=entry.url, limits=config.limits)
        decode_image(data, name=entry.url, draft_size=CHECK_DRAFT_SIZE, limits=config.limits)
    except ImageLoadError as err:
        return _Fetched(None, "", f"not a usable image: {err}", attempts)
    return _Fetched(data, EXTENSIONS[header.format], "", attempts)


def read_manifest(out: Path) -> dict[str, dict[str, str]]:
    """``url -> {"path", "sha256"}`` of earlier downloads into ``out`` (empty when none or unreadable)."""
    path = Path(out) / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return {
            str(url): {"path": str(v["path"]), "sha256": str(v["sha256"])} for url, v in payload["downloads"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("%s: unreadable manifest (%s); downloading everything again", printable(str(path)), err)
        return {}


def _write_manifest(out: Path, manifest: dict[str, dict[str, str]]) -> None:
    atomic_write_json(out / MANIFEST_NAME, {"schema_version": 1, "downloads": manifest})


def _present(out: Path, record: dict[str, str] | None) -> bool:
    """Whether a manifest record's file is still there with its recorded content."""
    if not record:
        return False
    try:
        return content_hash(read_image_file(out / record["path"])) == record["sha256"]
    except ImageLoadError:
        return False


def import_urls(
    list_path: str | Path,
    out: str | Path,
    config: IngestConfig = IngestConfig(),
    progress: ProgressFn | None = None,
    checkpoint_every: int = 20,
) -> IngestReport:
    """Download the images of a URL list into ``out/<label>/`` and report what happened.

    Args:
        list_path: The URL list (see :func:`parse_url_list`).
        out: Dataset folder to fill (created if needed).
        config: Concurrency, time, retry and size limits.
        progress: Called as ``progress(done, total)`` after each entry.
        checkpoint_every: The manifest is rewritten (atomically) after this many new downloads, and at the
            end, also when interrupted, so a rerun resumes where this one stopped.

    Returns:
        The report, also written atomically to ``out/ingest-report.json``.

    Raises:
        DatasetError: The list cannot be read, or ``out`` exists and is not a folder.
    """
    start = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{printable(str(out))}: exists and is not a folder")
    url_list = parse_url_list(list_path)
    for bad in url_list.malformed:
        log.warning("%s:%d: %s: %r", printable(str(url_list.path)), bad.line, bad.reason, bad.text)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out)
    items: dict[int, IngestItem] = {}
    first_line_of_url: dict[str, int] = {}
    to_fetch: list[UrlEntry] = []
    for entry in url_list.entries:
        if entry.url in first_line_of_url:
            items[entry.line] = IngestItem(
                entry.line,
                entry.url,
                entry.label,
                "duplicate",
                reason=f"same URL as line {first_line_of_url[entry.url]}",
            )
            continue
        first_line_of_url[entry.url] = entry.line
        record = manifest.get(entry.url)
        if record is not None and _present(out, record):
            items[entry.line] = IngestItem(
                entry.line, entry.url, entry.label, "present", record["path"], "already downloaded", 0, record["sha256"]
            )
        else:
            to_fetch.append(entry)
    path_of_content = {record["sha256"]: record["path"] for record in manifest.values() if _present(out, record)}
    total, done = len(url_list.entries), len(items)
    if progress:
        progress(done, total)
    opener = _opener(config)
    since_checkpoint = 0
    window: deque[tuple[UrlEntry, Future[_Fetched]]] = deque()
    pending = iter(to_fetch)
    with ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="ingest") as pool:
        try:
            while True:
                while len(window) < 4 * max(1, config.workers):
                    upcoming = next(pending, None)
                    if upcoming is None:
                        break
                    window.append((upcoming, pool.submit(_fetch, upcoming, config, opener)))
                if not window:
                    break
                entry, future = window.popleft()
                try:
                    fetched = future.result()
                except Exception as err:
                    fetched = _Fetched(None, "", f"unexpected error ({type(err).__name__}: {err})", 0)
                items[entry.line] = _store(entry, fetched, out, manifest, path_of_content)
                since_checkpoint += items[entry.line].status == "downloaded"
                if since_checkpoint >= checkpoint_every:
                    _write_manifest(out, manifest)
                    since_checkpoint = 0
                done += 1
                if progress:
                    progress(done, total)
        finally:
            for _, future in window:
                future.cancel()
            _write_manifest(out, manifest)
    report = IngestReport(
        url_list.path,
        out,
        time.perf_counter() - start,
        tuple(items[line] for line in sorted(items)),
        url_list.malformed,
        tuple({entry.label: entry.folder for entry in url_list.entries}.items()),
    )
    atomic_write_json(out / REPORT_NAME, report.to_dict())
    log.info("imported %s into %s: %s", printable(str(url_list.path)), printable(str(out)), report.counts())
    return report


def _store(
    entry: UrlEntry, fetched: _Fetched, out: Path, manifest: dict[str, dict[str, str]], path_of_content: dict[str, str]
) -> IngestItem:
    """Write a fetched image atomically (unless its content is already there) and record it."""
    data = fetched.data
    if data is None:
        log.info("failed line %d %s: %s", entry.line, entry.url, fetched.reason)
        return IngestItem(
            entry.line, entry.url, entry.label, "failed", reason=fetched.reason, attempts=fetched.attempts
        )
    sha256 = content_hash(data)
    if sha256 in path_of_content:
        return IngestItem(
            entry.line,
            entry.url,
            entry.label,
            "duplicate",
            path_of_content[sha256],
            f"same content as {path_of_content[sha256]}",
            fetched.attempts,
            sha256,
        )
    relative = f"{entry.folder}/{file_stem(entry.url)}{fetched.extension}"
    target = out / relative
    if target.resolve().parent.parent != out.resolve():  # safe_name makes this impossible; checked anyway
        raise DatasetError(f"{printable(str(target))}: refusing to write outside {printable(str(out))}")
    try:
        atomic_write(target, lambda handle: handle.write(data))
    except ArtifactError as err:
        cause = err.__cause__
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise  # every further write would fail too: stop, one line (the manifest keeps what was done)
        log.warning("failed line %d %s: %s", entry.line, printable(entry.url), err)
        return IngestItem(entry.line, entry.url, entry.label, "failed", reason=str(err), attempts=fetched.attempts)
    manifest[entry.url] = {"path": relative, "sha256": sha256}
    path_of_content[sha256] = relative
    return IngestItem(entry.line, entry.url, entry.label, "downloaded", relative, "", fetched.attempts, sha256)
