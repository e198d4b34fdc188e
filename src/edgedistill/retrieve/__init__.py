"""Retrieval: class prompts + an unlabeled pool -> the images of each class, a labelled dataset made with zero labels.

    prompts file ──► zero-shot head (CLIP: names and synonyms x templates; ImageNet: names -> label map)
    pool ──► teacher cache (once, shard by shard) ──► per class: candidates (exact top-k over the shards, or FAISS)
         ──► refined: example images, re-ranking rounds (the pool rescanned with the moved query)
         ──► rescored ──► filters (best class, min_score, margin, near-duplicates, top_k, balance) [+ other]
         ──► manifest.csv, retrieval.json, head, contact_sheet.png

A head score is the zero-shot head's: the cosine between an image's embedding and a class's text
embedding (CLIP teachers), or the class's label-map probability (ImageNet classifiers). With
example images (``retrieve.examples``) or re-ranking (``retrieve.rerank``, on by default) the score
is ``head_c(x) + w * (sim(x, P_c) - max(max_{c' != c} sim(x, P_c'), sim(x, N)))``: ``sim`` the mean
cosine to the 5 nearest, ``P_c`` the class's examples and most confident pool images, ``N`` a
background of low-scoring pool images (:class:`Query`). The pool streams through
the cache: scores are computed shard by shard from its memory maps, and only the candidates'
rows are read again, so no ``[N, C]`` matrix is ever held.

Modules, in the order of the pipeline: ``pool`` (the cache as rows), ``scoring`` (head and query),
``search`` (exact and FAISS), ``refine`` (examples, re-ranking), ``select`` (filters, balance,
other), ``manifest`` (write and read), ``sheet`` (contact sheet), ``run`` (plan and run),
``command`` (the CLI entry).

Search: ``exact`` keeps a running top-(k + pad) per class over the shards; ``faiss`` searches a
flat inner-product index (exact too) built once per source and saved beside its cache. Both
hand their candidates to the same rescoring, sorted by (score, pool order) and cut at k, so
they select the same images.

Output folder (``out``)::

    manifest.csv        one row per kept image: path, class, score, rank, margin, why, source, index
    retrieval.json      classes, prompts, the pool's sources (with identities), teacher, settings, counts, drops
    head.json/.safetensors   the zero-shot head: what students distil (``--train.head_path <out>/head``)
    label_map.json, label_map_review.{json,txt}   ImageNet teachers: the label map and why each class is in it
    contact_sheet.png   per class its top images and its borderline (lowest kept) ones

``manifest.csv`` is a dataset: ``--data.dataset manifest --data.root <out>/manifest.csv`` (its rows
may be deleted by a person who checked the contact sheet; :mod:`edgedistill.data.manifest` reopens
and checks the pool's sources, so the pool's teacher cache is reused).
"""

from __future__ import annotations

from edgedistill.retrieve.command import format_counts, retrieve_command
from edgedistill.retrieve.manifest import FORMAT, write_manifest
from edgedistill.retrieve.pool import PoolRows, item_sha256
from edgedistill.retrieve.refine import Examples, background, load_examples, open_examples, refine
from edgedistill.retrieve.run import RetrievalPlan, finished_retrieval, plan_retrieval, run_retrieval
from edgedistill.retrieve.scoring import Query, Scorer, centered, knn_similarity
from edgedistill.retrieve.search import FAISS_INDEX, exact_search, faiss_index, faiss_search
from edgedistill.retrieve.select import Kept, apply_balance, draw_other, select_class
from edgedistill.retrieve.sheet import contact_sheet

__all__ = ["FAISS_INDEX", "FORMAT", "Examples", "Kept", "PoolRows", "Query", "RetrievalPlan", "Scorer",
           "apply_balance", "background", "centered", "contact_sheet", "draw_other", "exact_search", "faiss_index", "faiss_search",
           "finished_retrieval", "format_counts", "item_sha256", "knn_similarity", "load_examples", "open_examples",
           "plan_retrieval", "refine", "retrieve_command", "run_retrieval", "select_class",
           "write_manifest"]
