"""Published weights: where each library keeps them, whether they are here, and what to say when they cannot be fetched.

The libraries download their own weights, with their own progress bars and
into a temporary file renamed into place when complete (so a broken download
is never used); the app keeps their code and their caches:

* torchvision weight enums and timm weights given by URL:
  ``$TORCH_HOME/hub/checkpoints/<file name of the URL>`` (``torch.hub.get_dir()``);
* timm and open_clip weights on the Hugging Face hub:
  ``$HF_HOME/hub/models--<org>--<name>/snapshots/<revision>/<file>``;
* open_clip weights given by URL: ``~/.cache/clip/<file name of the URL>``.

What this module adds is the answer before the library starts: is the file
here, and if not, can its host be reached within a few seconds. Without a
network a library may wait a long time or fail with a socket error naming
neither the file nor the cache; :meth:`PublishedWeights.require` fails in
seconds instead, saying which file is missing, where it would be cached and
how to put it there by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from labelloop.compute.network import connect_problem
from labelloop.errors import UserError

CONNECT_TIMEOUT_S = 5.0  # a host that does not answer in this long is taken as unreachable
HF_ENDPOINT_DEFAULT = "https://huggingface.co"


@dataclass(frozen=True)
class PublishedWeights:
    """The file(s) a published model's weights come from, and where its library caches them.

    Either ``url`` (one file, cached as ``url_cache / <file name of the url>``) or
    ``hf_repo`` with ``hf_files``: files the library needs from that repository, each
    a tuple of names of which the first cached one is used (``model.safetensors``
    before ``pytorch_model.bin``, as the libraries try them).
    """

    what: str  # e.g. "torchvision vit_l_16 IMAGENET1K_SWAG_E2E_V1"
    url: str | None = None
    url_cache: Path | None = None
    url_cache_note: str = "TORCH_HOME moves torch's cache"  # how the user moves url_cache, said in the offline message
    hf_repo: str | None = None
    hf_files: tuple[tuple[str, ...], ...] = ()
    hf_revision: str | None = None

    # ---------------------------------------------------------------- where
    def cached_files(self) -> list[Path] | None:
        """The cached files (one per needed file), or None if any is missing."""
        if self.url:
            path = self.url_cache / url_file_name(self.url)
            return [path] if path.is_file() else None
        found = []
        for names in self.hf_files:
            path = next((p for p in (_hf_cached(self.hf_repo, name, self.hf_revision) for name in names) if p is not None), None)
            if path is None:
                return None
            found.append(path)
        return found

    @property
    def cached(self) -> bool:
        return self.cached_files() is not None

    def download_bytes(self) -> int | None:
        """Bytes of the cached files (None if not all are here)."""
        files = self.cached_files()
        return sum(p.stat().st_size for p in files) if files is not None else None

    def cache_location(self) -> str:
        """Where the file(s) would be cached, as a user would look for them."""
        if self.url:
            return str(self.url_cache / url_file_name(self.url))
        folder = Path(hf_hub_cache()) / f"models--{self.hf_repo.replace('/', '--')}" / "snapshots" / "<revision>"
        return str(folder / (self.hf_files[-1][0] if self.hf_files else ""))

    def host(self) -> str:
        return urlparse(self.url).hostname if self.url else urlparse(os.environ.get("HF_ENDPOINT") or HF_ENDPOINT_DEFAULT).hostname

    # ---------------------------------------------------------------- can we get it
    def require(self, *, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Return at once if the weights are cached or their host answers; else raise a UserError saying what to do.

        Takes at most ``timeout`` seconds (one TCP connection attempt to the host, or to the
        HTTPS proxy when one is set). The download itself is the library's.
        """
        if self.cached:
            return
        if not self.url and _hf_offline():
            raise UserError(f"{self.missing()} Hugging Face offline mode is on (HF_HUB_OFFLINE=1), so nothing is downloaded. {self.how_to_place()}")
        problem = unreachable(self.host(), timeout)
        if problem:
            raise UserError(f"{self.missing()} It would be downloaded from {self.host()}, but {problem}. {self.how_to_place()}")

    def missing(self) -> str:
        names = url_file_name(self.url) if self.url else " and ".join(" or ".join(names) for names in self.hf_files)
        source = self.url if self.url else f"the Hugging Face repository {self.hf_repo}"
        return f"The weights of {self.what} are not on this machine: {names} from {source}, cached at {self.cache_location()}."

    def how_to_place(self) -> str:
        if self.url:
            return f"On a machine with internet, download {self.url} and copy it to {self.cache_location()} ({self.url_cache_note}), then run this again."
        files = " ".join(names[0] for names in self.hf_files)
        return (f"On a machine with internet, run `hf download {self.hf_repo} {files}` (or load the model there once), then copy its "
                f"models--{self.hf_repo.replace('/', '--')} folder into {hf_hub_cache()} here (HF_HOME moves that cache), and run this again.")


def url_file_name(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def torch_checkpoints() -> Path:
    """torch.hub's weights folder: ``$TORCH_HOME/hub/checkpoints`` (read at call time, as torch does)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _hf_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hf_cached(repo: str, filename: str, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def unreachable(host: str | None, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None if a TCP connection to ``host``:443 (or to the HTTPS proxy) opens within ``timeout`` s; else why not, in words."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if not proxy:
        return connect_problem(host, 443, timeout)
    target = urlparse(proxy)
    return connect_problem(target.hostname, target.port or 8080, timeout, via=f" (through the proxy {target.hostname}:{target.port or 8080})")
