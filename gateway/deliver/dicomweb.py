"""DICOMweb out of the gateway: WADO-RS retrieval of purged originals for `reprocess`, STOW-RS delivery.

Why the retrieved instances go through `gateway.receive.stow.InstanceSink`: an original fetched again must be as
safe as one received (the SCP's checks, spool write with fsync + rename, the purged row restored), and the
STOW-RS receiver already has that path for Part 10 files in a multipart/related body, which is exactly what
a WADO-RS series retrieval returns. The body is streamed (requests with `stream=True`, parsed by
python-multipart as it arrives), so a large series never sits in memory whole, and the bytes are stored as the
server sent them (no decode and re-encode through a pydicom Dataset).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
import requests
import urllib3

from gateway import logs
from gateway.errors import DeliveryError
from gateway.receive.stow import InstanceSink, RequestError, read_stow
from gateway.settings import Destination

log = logs.get("gateway.dicomweb_client")
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # its debug lines carry URLs with study UIDs

#: Ask for Part 10 files in the transfer syntax the server holds (no transcoding on its side).
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
#: Largest instance a WADO-RS retrieval takes (one instance is in memory at a time).
MAX_INSTANCE = 2 << 30


class _Session(requests.Session):
    """A session whose own `verify` wins over REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment.

    Why: requests merges the environment's CA bundle into each request and it takes precedence over the
    session's `verify`, so a configured `ca` (or `verify = false` for a test peer) would silently be replaced
    by whatever bundle the service's environment names. With `verify = true` and no `ca` the environment's
    bundle (a site's own CA) is still used; proxies from the environment always apply.
    """

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:  # `verify = true` keeps the environment's bundle
            settings["verify"] = self.verify
        return settings


def session(peer: Destination) -> requests.Session:
    """A requests session with the peer's credentials and its TLS verification (`verify`, `ca`)."""
    http = _Session()
    if peer.token:
        http.headers["Authorization"] = f"Bearer {peer.token}"
    elif peer.username:
        http.auth = (peer.username, peer.password)
    http.verify = str(peer.ca) if peer.ca is not None else peer.verify
    return http


def wado_series(
    peer: Destination, sink: InstanceSink, study_uid: str, series_uid: str, sop_uids: Sequence[str],
    *, timeout: float = 60.0,
) -> int:
    """WADO-RS `GET {url}/studies/{study}/series/{series}` into the spool; returns how many of `sop_uids` are back.

    Raises DeliveryError (nothing is queued by the caller) when the server cannot be reached, answers an error,
    sends something that is not a multipart/related body of DICOM files, or leaves a purged original missing.
    """
    url = f"{peer.url}/studies/{study_uid}/series/{series_uid}"
    http = session(peer)
    outcomes: list[Any] = []
    try:
        with http.get(url, headers={"Accept": WADO_ACCEPT}, stream=True, timeout=(10.0, timeout)) as answer:
            if answer.status_code != 200:
                raise DeliveryError(
                    f"WADO-RS of series {series_uid} from {peer.name} ({peer.url}) answered HTTP {answer.status_code}"
                    + (": check the source's token or username/password" if answer.status_code in (401, 403) else "")
                )
            answer.raw.decode_content = True
            result = read_stow(answer.raw, None, answer.headers.get("Content-Type", ""), max_part=MAX_INSTANCE,
                               sink=sink, study_uid=study_uid, sender=f"wado:{peer.name}")
            outcomes = result.outcomes
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        # reading `answer.raw` (streamed) raises urllib3's own errors, not requests': a cut-off body, a read timeout
        raise DeliveryError(f"WADO-RS of series {series_uid} from {peer.name} ({peer.url}) failed:"
                            f" {type(exc).__name__}: {str(exc)[:200]}") from exc
    except RequestError as exc:
        raise DeliveryError(f"WADO-RS of series {series_uid} from {peer.name}: {exc}") from exc
    finally:
        http.close()
    missing = [u for u in sop_uids if sink.state.instance_purged(u) is not False]
    failed = [o for o in outcomes if o.status]
    log.info("retrieve.done", study_uid=study_uid, series_uid=series_uid, restored=len(sop_uids) - len(missing),
             source=peer.name, how="wado-rs", received=len(outcomes), refused=len(failed))
    if missing:
        reasons = "; ".join(sorted({o.reason[:120] for o in failed}))[:400]
        raise DeliveryError(
            f"WADO-RS of series {series_uid} from {peer.name}: {len(missing)} of {len(sop_uids)} purged originals"
            " did not come back" + (f" ({reasons})" if reasons else "") + "; nothing was queued"
        )
    return len(sop_uids) - len(missing)


#: One STOW-RS request carries at most this many bytes of files (a large series goes in several requests, so
#: memory stays bounded: dicomweb-client builds each request body in memory).
STOW_BATCH_BYTES = 64 << 20


def stow_files(dest: Destination, files: Sequence[Path], *, timeout: float = 60.0) -> int:
    """Deliver derived files to a STOW-RS destination (`[[destinations]] type = "dicomweb"`); returns bytes sent.

    Why dicomweb-client: the well-kept reference client builds the multipart/related request and parses the
    PS3.18 response; its own retries are off, because the sender's backoff, dead state and circuit apply to
    every destination alike. Raises DeliveryError when any instance is not confirmed stored (an HTTP error,
    or a Failed SOP Sequence item in a 202 answer, with the server's reasons), so the delivery is retried.
    """
    from dicomweb_client.api import DICOMwebClient

    http = session(dest)
    client = DICOMwebClient(dest.url, session=http, timeout=(10.0, timeout))
    client.set_http_retry_params(retry=False)
    sent = 0
    try:
        batch: list[pydicom.Dataset] = []
        size = 0
        for i, path in enumerate(files):
            batch.append(pydicom.dcmread(path))
            size += path.stat().st_size
            if size >= STOW_BATCH_BYTES or i == len(files) - 1:
                _stow_batch(client, dest, batch)
                sent += size
                batch, size = [], 0
    finally:
        http.close()
    return sent


def _stow_batch(client: Any, dest: Destination, batch: list[pydicom.Dataset]) -> None:
    try:
        answer = client.store_instances(batch)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = ": check the destination's token or username/password" if status in (401, 403) else ""
        raise DeliveryError(f"STOW-RS to {dest.name} ({dest.url}) answered HTTP {status}{hint}") from exc
    except requests.RequestException as exc:
        raise DeliveryError(f"STOW-RS to {dest.name} ({dest.url}) failed: {type(exc).__name__}:"
                            f" {str(exc)[:200]}") from exc
    failed = list(answer.get("FailedSOPSequence", []) or [])
    if failed:
        reasons = sorted({f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed})
        raise DeliveryError(f"STOW-RS to {dest.name}: {len(failed)} of {len(batch)} instances refused"
                            f" (Failure Reason {', '.join(reasons)})")
    stored = {str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence", []) or []}
    missing = [ds for ds in batch if str(ds.SOPInstanceUID) not in stored]
    if missing:
        raise DeliveryError(f"STOW-RS to {dest.name}: {len(missing)} of {len(batch)} instances not confirmed"
                            " stored in the response")
