"""`MilvusIndex`: the `VectorIndex` on a Milvus deployment (or milvus-lite, the embedded Milvus, for one host).

Each version is a collection `<name>__v0001`, ...; searches and writes go through the alias `<name>`, and the alias
`<name>__previous` keeps the version a rollback returns to. A rebuild fills a new collection, validates it, and
moves the alias (zero downtime: a search resolves the alias once). Each collection's properties carry its
`VersionMeta` and its tuned search parameters, so a gateway holds no state of its own: replicas behind a Service
read the same aliases. Writes and rebuilds go through one writer (`read_only` replicas refuse them): the duplicate
checks read before they write, and a rebuild replays only the writes made through its own process.

Durability: Milvus acknowledges an insert, upsert or delete once it is in its write-ahead log (a message queue on a
cluster, a local WAL file in milvus-lite). One request is one log entry, so `put_many` is all or nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Sequence

import numpy as np

from blat_gateway.errors import BackendDown, BadRequest, NotFound
from blat_gateway.index import exact
from blat_gateway.index.exact import QUERY_NOISES, SAMPLE_QUERIES, TUNE_MARGIN
from blat_gateway.index.milvus_rows import MAX_VARCHAR, Collection, row_of
from blat_gateway.index.protocol import AnnConfig, Pair, Scored, VersionMeta
from blat_gateway.index.records import MAX_TAG_CHARS, MAX_TAGS, ItemRecord, SearchFilter

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")
VERSION_RE = r"__v(\d{4,})"
META, SEARCH = "blat.meta", "blat.search_params"  # collection properties
INDEX_WAIT_S = 3600.0  # a rebuild waits this long for Milvus to index the new collection
DEFAULT_SEARCH = {"flat": {}, "ivf": {"nprobe": 16}, "hnsw": {"ef": 64}}  # until `finish` tunes them
TUNED = {"ivf": ("nprobe", 1), "hnsw": ("ef", exact.RECALL_K)}  # the parameter tuning raises, from this value


@dataclasses.dataclass(frozen=True)
class MilvusConfig:
    uri: str = ""  # "http://milvus:19530" (a Milvus server or cluster), or a file path (milvus-lite, one process)
    collection: str = "blat_audio"  # the alias searches go through; versions are <collection>__v0001, ...
    token: str = ""  # "user:password" or an API key; "" when Milvus runs without authentication
    db_name: str = ""  # "" = Milvus's default database
    timeout_s: float = 10.0  # per Milvus call

    @property
    def local(self) -> bool:
        """A file path: milvus-lite, embedded in this process (one process per file, like the FAISS directory)."""
        return "://" not in self.uri

    def __post_init__(self):
        if not NAME_RE.fullmatch(self.collection):
            raise BadRequest(f"milvus.collection must match {NAME_RE.pattern}, got {self.collection!r}")


class _ExpectedMisses(logging.Filter):
    """pymilvus logs every failed call at ERROR with a traceback. Two failures are answers here, not errors:
    `describe_alias` failing is how this engine learns that an alias does not exist yet (Milvus 2.3 lists aliases only
    per collection), and a read of a collection not loaded is loaded and asked again (milvus_rows.Collection.call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "[describe_alias]" not in message and "collection not loaded" not in message


logging.getLogger("pymilvus.decorators").addFilter(_ExpectedMisses())


# -- versions --------------------------------------------------------------------------------------------------------


class MilvusIndex:
    """Open (or create, with `meta`) the versions of `config.collection`. Safe to open from many processes."""

    def __init__(self, config: MilvusConfig, meta: VersionMeta, cfg: AnnConfig):
        from pymilvus import MilvusClient

        if not config.uri:
            raise BadRequest("milvus.uri is required: http://host:19530, or a file path for milvus-lite")
        self.config, self.cfg = config, cfg
        self.alias, self.previous_alias = config.collection, config.collection + "__previous"
        try:
            self.client = MilvusClient(
                uri=config.uri, token=config.token, db_name=config.db_name, timeout=config.timeout_s
            )
        except Exception as e:  # pymilvus raises several types for an unreachable or misconfigured server
            raise BackendDown(f"cannot connect to Milvus at {config.uri}: {e}") from None
        self._meta: dict[str, tuple[VersionMeta, dict]] = {}  # per collection: both are fixed once it is built
        self.live = Collection(self.client, self.alias)
        if self._target(self.alias) is None:
            first = self._create(self._next_name(), meta, cfg)
            self.live.call("create_alias", first, self.alias)
        self.live.call("load_collection", self.name)  # milvus-lite releases collections when its process ends

    # -- names -----------------------------------------------------------------------------------------------------

    def _target(self, alias: str) -> str | None:
        from pymilvus.exceptions import MilvusException

        try:
            return self.client.describe_alias(alias)["collection_name"]
        except MilvusException:
            return None

    def _versions(self) -> list[str]:
        pattern = re.compile(re.escape(self.alias) + VERSION_RE)
        return sorted(c for c in self.live.call("list_collections") if pattern.fullmatch(c))

    def _next_name(self) -> str:
        numbers = [int(re.search(VERSION_RE + "$", c).group(1)) for c in self._versions()]
        return f"{self.alias}__v{max(numbers, default=0) + 1:04d}"

    @property
    def name(self) -> str:
        target = self._target(self.alias)
        if target is None:
            raise BackendDown(f"Milvus has no alias {self.alias!r}: was the collection dropped?")
        return target

    @property
    def previous(self) -> str | None:
        return self._target(self.previous_alias)

    def _info(self, collection: str) -> tuple[VersionMeta, dict]:
        if collection not in self._meta:
            props = self.live.call("describe_collection", collection).get("properties", {})
            if META not in props:
                raise BackendDown(f"Milvus collection {collection} has no {META} property: not made by this server")
            self._meta[collection] = (VersionMeta(**json.loads(props[META])), json.loads(props.get(SEARCH, "{}")))
        return self._meta[collection]

    @property
    def meta(self) -> VersionMeta:
        return self._info(self.name)[0]

    def _create(self, name: str, meta: VersionMeta, cfg: AnnConfig) -> str:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=256)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=meta.dim)
        schema.add_field("source_uri", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("duration_s", DataType.DOUBLE)  # unknown: milvus_rows.UNKNOWN_DURATION (no nullable in 2.3)
        schema.add_field(
            "tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_TAGS, max_length=4 * MAX_TAG_CHARS
        )  # bytes: 4 per character at most in UTF-8
        schema.add_field("caption", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("added_at", DataType.DOUBLE)
        schema.add_field("extra", DataType.JSON)  # filterable by key (versions made before held JSON text: VARCHAR)
        self.live.call(
            "create_collection",
            name,
            schema=schema,
            consistency_level="Strong",
            properties={META: json.dumps(dataclasses.asdict(meta)), SEARCH: json.dumps(DEFAULT_SEARCH[meta.kind])},
        )
        kinds = {
            "flat": ("FLAT", {}),
            "ivf": ("IVF_FLAT", {"nlist": cfg.nlist or 1024}),
            "hnsw": ("HNSW", {"M": cfg.hnsw_m, "efConstruction": cfg.ef_construction}),
        }
        index_type, params = kinds[meta.kind]
        self._index(name, "vec", index_type=index_type, metric_type="IP", params=params)
        # Scalar indexes on the filtered fields, so a filter does not scan every row; a field without one (tags on
        # Milvus 2.3 and milvus-lite) is scanned instead.
        for field, index_type in self._scalar_indexes().items():
            self._index(name, field, optional=True, index_type=index_type)
        # Released until sealed (`MilvusStaging._seal`). Milvus leaves a new collection released anyway; milvus-lite
        # starts it loaded, and would then build segment indexes in a background thread after each flush.
        self.live.call("release_collection", name)
        return name

    def _scalar_indexes(self) -> dict[str, str]:
        """The scalar index each filtered field gets on this Milvus: INVERTED from 2.4 on (ARRAY fields included);
        2.3 has a Trie for VARCHAR and STL_SORT for numbers, and none for ARRAY; milvus-lite, INVERTED but for ARRAY."""
        version = self.client.get_server_version()
        if version.startswith("milvus_lite"):
            return {"source_uri": "INVERTED", "duration_s": "INVERTED"}
        numbers = re.match(r"v?(\d+)\.(\d+)", version)
        if numbers and (int(numbers.group(1)), int(numbers.group(2))) < (2, 4):
            return {"source_uri": "Trie", "duration_s": "STL_SORT"}
        return {"source_uri": "INVERTED", "duration_s": "INVERTED", "tags": "INVERTED"}

    def _index(self, collection: str, field: str, optional: bool = False, **spec) -> None:
        """Create one index on a collection not yet loaded (Milvus's order: create, index, load)."""
        from pymilvus.exceptions import MilvusException

        params = self.client.prepare_index_params()
        params.add_index(field_name=field, **spec)
        try:  # not sync: pymilvus would poll the state of an index on no rows, sleeping 0.5 s first (`_seal` waits)
            self.client.create_index(collection, params, sync=False)
        except MilvusException as e:
            if not optional:
                raise BackendDown(f"Milvus create_index on {collection}.{field}: {e.message}") from None
            log.info("no %s index on %s.%s: %s", spec.get("index_type"), collection, field, e.message)

    # -- items -----------------------------------------------------------------------------------------------------

    def put_many(self, pairs: Sequence[Pair], upsert: bool, check_hash: bool = True) -> list[ItemRecord]:
        return self.live.put_many(pairs, upsert, check_hash)

    def delete(self, item_id: str) -> ItemRecord | None:
        return self.live.delete(item_id)

    def get(self, item_id: str) -> ItemRecord | None:
        return self.live.get(item_id)

    def embedding(self, item_id: str) -> np.ndarray | None:
        return self.live.embedding(item_id)

    def embeddings_by_id(self, ids: list[str]) -> dict[str, np.ndarray]:
        return self.live.embeddings_by_id(ids)

    def page(self, flt: SearchFilter | None, after: str, limit: int) -> list[ItemRecord]:
        return self.live.page(flt, after, limit)

    def search(self, x: np.ndarray, k: int, flt: SearchFilter | None) -> list[list[Scored]]:
        return self.live.search(x, k, flt, self._info(self.name)[1])

    def count(self) -> int:
        return self.live.count()

    def stats(self) -> dict:
        name = self.name
        meta, params = self._info(name)
        n = self.live.count()
        return {
            "count": n,
            "index_type": meta.kind,
            "index_total": n,
            "tombstones": 0,
            "writes_since_snapshot": 0,
            "needs_compaction": False,
            "params": params,
            "gpu": False,
        }

    # -- versions --------------------------------------------------------------------------------------------------

    def new_version(self, meta: VersionMeta, cfg: AnnConfig) -> MilvusStaging:
        name, keep = self._next_name(), {self.name, self.previous}  # named first: above every number yet used
        for stale in set(self._versions()) - keep:  # a rebuild killed before its swap, a version rolled back from
            log.info("dropping unreferenced Milvus collection %s", stale)
            self.live.call("drop_collection", stale)
        return MilvusStaging(self, self._create(name, meta, cfg), cfg)

    def swap(self, staging: MilvusStaging) -> None:
        live = self.name
        self._point(self.previous_alias, live)  # first: a crash between the two calls leaves the old version live
        self.live.call("alter_alias", staging.name, self.alias)  # the switch
        staging.swapped = True
        self.live.call("release_collection", live)  # the previous version stays on disk, out of memory
        for name in self._versions():  # the one before, and any a rollback left behind
            if name not in (live, staging.name):
                self.live.call("drop_collection", name)

    def _point(self, alias: str, collection: str) -> None:
        if self._target(alias) is None:
            self.live.call("create_alias", collection, alias)
        else:
            self.live.call("alter_alias", collection, alias)

    def rollback(self, lock: threading.RLock) -> str:
        with lock:
            previous, live = self.previous, self.name
        if previous is None:
            raise NotFound("there is no previous version to roll back to")
        self.live.call("load_collection", previous)  # outside the lock: loading a large collection takes a while
        with lock:
            self.live.call("alter_alias", previous, self.alias)
            self.live.call("drop_alias", self.previous_alias)  # one step back, not a toggle
            self.live.call("release_collection", live)  # dropped at the next swap: until then, its number is taken
        return previous

    def compact(self, lock: threading.RLock) -> dict:
        """Milvus compacts segments on its own; this asks for one now (deleted rows are dropped from disk)."""
        name = self.name
        job = self.live.call("compact", name)
        meta, params = self._info(name)
        return {
            "tombstones_removed": None,
            "index_type": meta.kind,
            "recall": None,
            "params": params,
            "milvus_compaction_id": job,
        }

    def snapshot(self) -> None:
        """Nothing to do: Milvus seals and persists segments on its own schedule (explicit flushes only make small
        segments), and milvus-lite 3.2 can duplicate rows when killed during one."""

    def close(self) -> None:
        self.client.close()
        if self.config.local:  # milvus-lite runs inside this process: stop it, releasing its lock on the file
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.config.uri)


class MilvusStaging:
    """A collection being filled beside the live one; the alias moves to it in `MilvusIndex.swap`."""

    def __init__(self, owner: MilvusIndex, name: str, cfg: AnnConfig):
        self.owner, self.name, self.cfg = owner, name, cfg
        self.rows = Collection(owner.client, name)
        self.loaded, self.swapped = 0, False

    @property
    def required_recall(self) -> float:
        return 1.0 if self.cfg.kind == "flat" else self.cfg.target_recall

    def load(self, pairs: Sequence[Pair]) -> int:
        self.rows.call("insert", self.name, [row_of(item, vec) for item, vec in pairs])  # ids screened by the caller
        self.loaded += len(pairs)
        return len(pairs)

    def finish(self) -> float:
        self._seal()
        n = self.rows.count()
        if n != self.loaded:
            raise ValueError(f"validation: {self.loaded} items added, Milvus holds {n}")
        if n == 0:
            return 1.0
        sets = self._query_sets()
        params = dict(DEFAULT_SEARCH[self.cfg.kind])
        if self.cfg.kind in TUNED:  # the smallest nprobe / ef that reaches the target on tuning's queries
            key, start = TUNED[self.cfg.kind]
            top = (self.cfg.nlist or 1024) if key == "nprobe" else 1024
            params[key], _ = exact.tune_param(
                lambda v: self._recall(sets[0], {**params, key: v}),
                start,
                top,
                min(1.0, self.cfg.target_recall + TUNE_MARGIN),
            )
            self.rows.call("alter_collection_properties", self.name, properties={SEARCH: json.dumps(params)})
            self.owner._meta.pop(self.name, None)
        return self._recall(sets[1], params)  # graded on other queries than it was tuned on

    def _seal(self) -> None:
        """Flush, wait for Milvus to index every sealed row, then load: recall is measured on the index that will
        serve, not on the brute-force scan Milvus uses for rows it has not indexed yet.

        The collection is loaded here for the first time. milvus-lite builds a loaded collection's segment indexes
        in a background thread after each flush, and neither `describe_index` nor `load_collection` waits for it:
        recall would be measured partly on brute force (and tuned too low), and a reload could read a half-written
        index file. Released until now, the collection gets no background builds; the load builds them all."""
        self.rows.call("flush", self.name)
        deadline = time.monotonic() + INDEX_WAIT_S
        while (pending := self.rows.call("describe_index", self.name, "vec").get("pending_index_rows", 0)) > 0:
            if time.monotonic() > deadline:
                raise ValueError(f"validation: Milvus still has {pending} rows to index after {INDEX_WAIT_S:.0f} s")
            time.sleep(0.5)
        self.rows.call("load_collection", self.name)

    def _query_sets(self) -> tuple[list, list]:
        """(tuning's, validation's) query sets: stored vectors perturbed at each distance, with exact answers."""
        ids: list[str] = []
        vecs = []
        for chunk_ids, chunk in self.rows.scan():
            ids += chunk_ids
            vecs.append(chunk)
        x = np.concatenate(vecs)  # fine for a test-sized or mid-sized collection; see README for the scale limits
        self._position = {item_id: n for n, item_id in enumerate(ids)}  # id -> row of x, the ground truth's fid
        positions = lambda: [(np.arange(len(x), dtype=np.int64), x)]  # noqa: E731
        sample = lambda n, rng: x[rng.choice(len(x), size=min(n, len(x)), replace=False)]  # noqa: E731
        return (
            exact.query_sets(sample, positions, QUERY_NOISES, SAMPLE_QUERIES, seed=0),
            exact.query_sets(sample, positions, QUERY_NOISES, SAMPLE_QUERIES, seed=2),
        )

    def _recall(self, sets: list, params: dict) -> float:
        """Worst recall@10 over the query sets, searching the collection with `params`."""
        worst = 1.0
        for queries, truth in sets:
            hits = self.rows.search(queries, exact.RECALL_K, None, params)
            scores = np.full((len(queries), exact.RECALL_K), -np.inf, np.float32)
            fids = np.full((len(queries), exact.RECALL_K), -1, np.int64)
            for q, row in enumerate(hits):
                for j, (s, item) in enumerate(row):
                    scores[q, j], fids[q, j] = s, self._position[item.id]
            worst = min(worst, exact.recall((scores, fids), truth))
        return worst

    def put_many(self, pairs: Sequence[Pair], upsert: bool = True, check_hash: bool = False) -> list[ItemRecord]:
        return self.rows.put_many(pairs, upsert, check_hash)

    def delete(self, item_id: str) -> ItemRecord | None:
        return self.rows.delete(item_id)

    def count(self) -> int:
        return self.rows.count()

    def discard(self) -> None:
        if not self.swapped:
            self.rows.call("drop_collection", self.name)
