"""The server's routes by concern: read (items, photos, health), search (similar items by id
or photo), write (add and delete with the API key), page (the search page)."""

from fastapi import Path, Query

#: every ``{item_id}`` of every route (its OpenAPI example is set per index: contract.py)
ITEM_ID = Path(description="An item's id.")
MAX_K = 100
RERANK_PATTERN = (r"^(none|classify|(vote|expand)(=[0-9]{1,6})?)"
                  r"(,(none|classify|(vote|expand)(=[0-9]{1,6})?))*$")
RERANK = Query(None, pattern=RERANK_PATTERN,
               description="Re-ranking: none, vote[=N] (rank the category most of the N "
                           "nearest items have first), classify (rank the category the "
                           "model's classifier names first), expand[=N] (α-query "
                           "expansion), comma-separated; default: the index's own.")
