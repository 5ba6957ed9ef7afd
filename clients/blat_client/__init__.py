"""Python client of the BLAT gateway, speaking only its wire protocols (REST/JSON and gRPC):

    from blat_client import Client
    with Client("http://127.0.0.1:8080") as c:          # or "grpc://127.0.0.1:50051"
        for hit in c.search_text("dog barking", k=5).hits:
            print(hit.id, round(hit.score, 3), hit.item.tags)

`AsyncClient` has the same methods, awaited. Results are the typed values in `blat_client.types`, identical on
both transports; every failure is a `ClientError`.
"""

from blat_client.audio import Samples, wav_chunks
from blat_client.client import NO_RETRY, AsyncClient, Client, Retry
from blat_client.errors import ClientError
from blat_client.types import (
    AddReport,
    Caption,
    Hit,
    Info,
    Item,
    ItemsPage,
    Job,
    LabelScore,
    SearchResult,
    Stats,
    Tags,
    TagWindow,
)

__version__ = "0.2.0"
__all__ = [
    "AddReport",
    "AsyncClient",
    "Caption",
    "Client",
    "ClientError",
    "Hit",
    "Info",
    "Item",
    "Job",
    "LabelScore",
    "NO_RETRY",
    "Retry",
    "ItemsPage",
    "SearchResult",
    "Stats",
    "TagWindow",
    "Tags",
    "Samples",
    "wav_chunks",
]
