"""The knowledge base's pure core: documents to sections (`parse`), sections to chunks (`chunk`), a per-tenant
search index (`index`) and the async `Retriever` that embeds a query and searches (`retrieve`).

No database and no Triton here: the store keeps documents and vectors, the embedder is injected
(`orchestrator.models.ports.Embedder`).
"""
