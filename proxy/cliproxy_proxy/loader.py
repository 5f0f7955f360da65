"""Where config comes from: one file, or a mounted ConfigMap directory plus a mounted Secret directory."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from .config import ConfigError, ProxyConfig, parse_config_text

#: File names a config directory may hold; the operator gzips a rendered config too large for one ConfigMap.
CONFIG_NAMES = ("config.yaml", "config.yml", "config.json", "config.json.gz")


def decode_config(name: str, raw: bytes) -> ProxyConfig:
    """Parse a config document, gunzipping it first when its name says so."""
    if name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            raise ConfigError(f"(top level): {name} is not valid gzip") from None
    return parse_config_text(raw)


class ConfigSource:
    """Reads the config document and the secret files it names.

    ``path`` is a YAML/JSON file or a directory holding ``config.yaml``. Relative secret file names resolve
    against ``secrets_dir`` (a mounted Secret), or else against the config file's own directory.
    """

    def __init__(self, path: Path | str, secrets_dir: Path | str | None = None) -> None:
        self.path = Path(path).expanduser()
        self.secrets_dir = Path(secrets_dir).expanduser() if secrets_dir is not None else None

    def config_file(self) -> Path:
        if not self.path.is_dir():
            return self.path
        for name in CONFIG_NAMES:
            candidate = self.path / name
            if candidate.exists():
                return candidate
        raise ConfigError(f"(top level): no {' or '.join(CONFIG_NAMES)} in {self.path}")

    def secret_path(self, name: str) -> Path:
        path = Path(name).expanduser()
        if path.is_absolute():
            return path
        base = self.secrets_dir or self.config_file().parent
        return base / path

    def read_config(self) -> tuple[ProxyConfig, bytes]:
        file = self.config_file()
        try:
            raw = file.read_bytes()
        except OSError as error:
            raise ConfigError(f"(top level): cannot read {file}: {error.strerror}") from None
        return decode_config(file.name, raw), raw

    def read_secret(self, name: str, where: str) -> str:
        """The stripped content of a secret file; errors name the file, never its content."""
        path = self.secret_path(name)
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not UTF-8 text"
            raise ConfigError(f"{where}: cannot read secret file {path}: {reason}") from None
        if not value:
            raise ConfigError(f"{where}: secret file {path} is empty")
        return value

    @property
    def using_api(self) -> bool:
        """Whether the config comes from somewhere other than these files right now."""
        return False

    async def start(self, changed: Callable[[], None]) -> None:
        """Begin watching; ``changed`` is called when a reload should not wait for the next poll."""

    async def stop(self) -> None:
        """Stop what :meth:`start` began."""

    def watched_files(self) -> list[Path]:
        """Files whose change means a reload: the config file and every visible file of the secrets dir."""
        files = [self.config_file()]
        if self.secrets_dir is not None and self.secrets_dir.is_dir():
            files.extend(sorted(p for p in self.secrets_dir.iterdir() if not p.name.startswith(".") and p.is_file()))
        return files

    def fingerprint(self, extra: Iterable[Path] = ()) -> str:
        """A content hash of every watched file: cheap to take every second, immune to inode games."""
        digest = hashlib.sha256()
        for path in [*self.watched_files(), *extra]:
            digest.update(str(path).encode())
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"\0missing")
        return digest.hexdigest()
