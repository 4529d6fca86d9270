"""Milvus back end through ``pymilvus.MilvusClient``: an embedded Milvus Lite file by default, a Milvus server
or cluster when ``uri`` is ``http://host:19530`` (same code path, same class).

The collection has an ``INT64`` primary key ``id`` and a ``FLOAT_VECTOR`` field ``vector`` holding the embeddings
mapped into the index's :class:`~core.index.VectorSpace` (unit length for cosine, scaled by ``sqrt(|w|)`` for the
SVM ranker); it is searched by inner product (cosine) or L2 (Milvus returns squared L2). Inserts and deletes are
incremental on the Milvus side. The vectors live in Milvus (the ``.db`` file or the server); ``save`` writes the
manifest, which records the URI and collection so ``load`` reconnects to them, and ``ids.npy``, the ids the
collection holds (reading them back from Milvus takes minutes at 10^6 rows; ``load`` checks their count against
Milvus's).

Each new index gets a collection of its own (``gallery_<time>_<random>`` unless the config names one), so
``index build`` can replace a saved Milvus index like any other: the collection of the version it supersedes is
dropped after the switch. A Milvus Lite file serves one process at a time; a second process gets a one-line
:class:`~core.errors.ArtifactError` (use a Milvus server to share an index between the app, the REST service and
the CLI). Server credentials come from the config's ``token`` or the ``MILVUS_TOKEN`` environment variable and are
never written to the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ArtifactError
from core.index import IndexHits, UnsupportedRankerError, VectorIndex, VectorSpace, config_dict, space_for
from core.rankers import Ranker

log = logging.getLogger(__name__)

_INSERT_BATCH = 10_000
#: The ids the collection holds, saved beside the manifest.
IDS_FILE = "ids.npy"
#: Environment variable read for server credentials when the config has no token.
TOKEN_VARIABLE = "MILVUS_TOKEN"


@dataclass(frozen=True)
class MilvusConfig:
    """Settings of a Milvus index.

    Attributes:
        uri: A Milvus Lite file (``*.db``, default ``milvus.db`` in the index folder passed to ``save``, or
            the working directory before that) or a server URI such as ``http://localhost:19530``.
        collection: Collection name; empty (the default): a new ``gallery_<time>_<random>`` for each index.
        index_type: Milvus index type (``FLAT``, ``HNSW``, ``IVF_FLAT``, ``AUTOINDEX``...).
        index_params: Build parameters of that index type (e.g. ``{"M": 32, "efConstruction": 80}``).
        search_params: Search parameters (e.g. ``{"ef": 128}`` or ``{"nprobe": 32}``).
        token: Server credentials (``user:password`` or an API key); empty: ``$MILVUS_TOKEN`` if set. Unused by
            Milvus Lite, never saved.
    """

    uri: str = "milvus.db"
    collection: str = ""
    index_type: str = "FLAT"
    index_params: dict[str, Any] = field(default_factory=dict)
    search_params: dict[str, Any] = field(default_factory=dict)
    token: str = ""

    @property
    def is_lite(self) -> bool:
        return "://" not in self.uri


def new_collection_name() -> str:
    """A collection name no other index uses: ``gallery_<time>_<random>``."""
    return f"gallery_{time.strftime('%Y%m%dT%H%M%S')}_{secrets.token_hex(4)}"


def _pymilvus():
    try:
        import pymilvus
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise UnsupportedRankerError("pymilvus is not installed: pip install -r requirements-scale.txt") from err
    return pymilvus


class MilvusIndex(VectorIndex):
    """A Milvus collection serving one vector space (cosine, l2, SVM-weighted l2 or a projection)."""

    backend = "milvus"

    def __init__(
        self, fingerprint: str, dim: int, space: VectorSpace, config: MilvusConfig = MilvusConfig(), create: bool = True
    ) -> None:
        super().__init__(fingerprint, dim)
        self.space = space
        self.ranker_name = space.ranker_name
        if create and not config.collection:
            config = dataclasses.replace(config, collection=new_collection_name())
        self.config = config
        pymilvus = _pymilvus()
        self._client = connect(config)
        self._ids: np.ndarray | None = np.zeros(0, np.int64) if create else None  # None: ask Milvus
        if create:
            self._create(pymilvus)
        elif not self._client.has_collection(config.collection):
            raise ValueError(f"{config.uri}: no collection {config.collection!r}")

    def _create(self, pymilvus: Any) -> None:
        client, name = self._client, self.config.collection
        if client.has_collection(name):
            raise ValueError(f"{self.config.uri}: collection {name!r} exists already; load it or pick another name")
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=self.space.output_dim(self.dim))
        params = client.prepare_index_params()
        params.add_index(
            field_name="vector",
            index_type=self.config.index_type,
            metric_type=self._metric(),
            params=dict(self.config.index_params),
        )
        client.create_collection(name, schema=schema)
        # the index of an empty collection: nothing to wait for (pymilvus's wait asks for a timestamp Milvus Lite
        # does not serve, which logs a traceback)
        client.create_index(name, params, sync=False)
        client.load_collection(name)

    def _metric(self) -> str:
        return "IP" if self.space.inner_product else "L2"

    def set_search_params(self, **params: Any) -> None:
        """Change the recall / speed trade-off of later searches (e.g. ``nprobe=64`` for IVF, ``ef=128`` for HNSW)."""
        self.config = dataclasses.replace(self.config, search_params={**self.config.search_params, **params})

    def close(self) -> None:
        """Release the connection (and, for Milvus Lite, the embedded server)."""
        self._client.close()

    def __len__(self) -> int:
        stats = self._client.get_collection_stats(self.config.collection)
        return int(stats["row_count"])

    def ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = self._read_ids()
        return self._ids.copy()

    def _read_ids(self) -> np.ndarray:
        """Every id of the collection, read back from Milvus (minutes at 10^6 rows in Milvus Lite)."""
        iterator = self._client.query_iterator(
            self.config.collection, batch_size=10_000, filter="", output_fields=["id"]
        )
        found: list[int] = []
        try:
            while batch := iterator.next():
                found.extend(row["id"] for row in batch)
        finally:
            iterator.close()
        return np.asarray(found, np.int64)

    def _existing(self, ids: np.ndarray) -> np.ndarray:
        found: list[int] = []
        for start in range(0, len(ids), _INSERT_BATCH):
            rows = self._client.get(
                self.config.collection, ids=ids[start : start + _INSERT_BATCH].tolist(), output_fields=["id"]
            )
            found.extend(row["id"] for row in rows)
        return np.asarray(found, np.int64)

    def _add(self, ids: np.ndarray, embeddings: np.ndarray) -> None:
        clash = self._existing(ids)
        if len(clash):
            raise ValueError(f"add: {len(clash)} id(s) already in the index (e.g. {int(clash[0])}); remove them first")
        vectors = self.space.transform(embeddings)
        for start in range(0, len(ids), _INSERT_BATCH):
            rows = slice(start, start + _INSERT_BATCH)
            self._client.insert(
                self.config.collection,
                [{"id": int(i), "vector": v} for i, v in zip(ids[rows], vectors[rows], strict=True)],
            )
        self._client.flush(self.config.collection)
        if self._ids is not None:
            self._ids = np.concatenate([self._ids, ids])

    def _remove(self, ids: np.ndarray) -> int:
        present = self._existing(ids)
        if len(present):
            self._client.delete(self.config.collection, ids=present.tolist())
            self._client.flush(self.config.collection)
            if self._ids is not None:
                self._ids = self._ids[~np.isin(self._ids, present)]
        return len(present)

    def _search(self, queries: np.ndarray, k: int, ranker: Ranker) -> IndexHits:
        space = space_for(ranker)
        if not space.same_as(self.space):
            raise UnsupportedRankerError(
                f"this Milvus index serves {self.space.metric}, not {ranker.name!r} ({space.metric})"
            )
        results = self._client.search(
            self.config.collection,
            data=list(self.space.transform(queries)),
            limit=k,
            output_fields=["id"],
            search_params={"metric_type": self._metric(), "params": dict(self.config.search_params)},
        )
        ids = np.full((len(queries), k), -1, np.int64)
        distances = np.zeros((len(queries), k), np.float32)
        for row, hits in enumerate(results):
            for column, hit in enumerate(hits[:k]):
                ids[row, column], distances[row, column] = hit["id"], hit["distance"]
        scores = np.where(ids >= 0, self.space.scores_from_distances(distances), -np.inf).astype(np.float32)
        return IndexHits(ids, scores)

    def _save_files(self, folder: Path) -> dict[str, Any]:
        self._client.flush(self.config.collection)
        uri = str(Path(self.config.uri).resolve()) if self.config.is_lite else self.config.uri
        config = {**config_dict(self.config), "uri": uri, "token": ""}  # never persist credentials
        np.save(folder / IDS_FILE, np.sort(self.ids()).astype("<i8"), allow_pickle=False)
        return {"config": config, "space": self.space.to_json(), "files": [IDS_FILE]}

    def inconsistency(self) -> str | None:
        return self.space.inconsistency(self.dim)

    @classmethod
    def _load_files(cls, folder: Path, manifest: dict[str, Any], token: str = "") -> MilvusIndex:
        config = MilvusConfig(**{**manifest["config"], "token": token})
        index = cls(
            manifest["fingerprint"], manifest["dim"], VectorSpace.from_json(manifest["space"]), config, create=False
        )
        if IDS_FILE in manifest.get("files", []):  # saved before ids were kept: read back from Milvus when asked
            ids = np.load(folder / IDS_FILE, allow_pickle=False)
            if ids.ndim != 1 or ids.dtype != np.int64 or len(ids) != len(index):
                raise ValueError(f"{IDS_FILE} holds {ids.shape} {ids.dtype}, the collection {len(index)} rows")
            index._ids = ids
        return index

    @classmethod
    def _release_superseded(cls, manifest: dict[str, Any], live: dict[str, Any] | None) -> None:
        """Drop the collection of a superseded version unless the live version uses it too."""
        config = manifest.get("config")
        if not isinstance(config, dict) or not config.get("collection"):
            return
        place = (config.get("uri"), config.get("collection"))
        live_config = (live or {}).get("config") or {}
        if (
            live
            and live.get("backend") == cls.backend
            and place == (live_config.get("uri"), live_config.get("collection"))
        ):
            return
        client = connect(MilvusConfig(uri=str(config["uri"]), collection=str(config["collection"])))
        if client.has_collection(place[1]):
            client.drop_collection(place[1])
            log.info("%s: dropped the superseded collection %s", place[0], place[1])


def connect(config: MilvusConfig) -> Any:
    """A ``MilvusClient`` for ``config.uri`` (a Milvus Lite file is created with its folder).

    Raises:
        ArtifactError: Milvus cannot be reached, or the Lite file is held by another process.
    """
    pymilvus = _pymilvus()
    token = config.token or os.environ.get(TOKEN_VARIABLE, "")
    try:
        if config.is_lite:
            Path(config.uri).parent.mkdir(parents=True, exist_ok=True)
            return pymilvus.MilvusClient(config.uri)
        return pymilvus.MilvusClient(config.uri, token=token) if token else pymilvus.MilvusClient(config.uri)
    except pymilvus.exceptions.MilvusException as err:
        reason = " ".join(str(getattr(err, "message", err)).split())[:200]
        hint = (
            "a Milvus Lite file serves one process at a time: close the other one (the app, `serve`) or use a "
            "Milvus server (--milvus-uri http://host:19530)"
            if config.is_lite
            else f"check the URI and ${TOKEN_VARIABLE}"
        )
        raise ArtifactError(f"{config.uri}: cannot open Milvus ({reason}); {hint}") from err
