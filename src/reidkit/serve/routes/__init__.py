"""The HTTP routes, one ``APIRouter`` module per concern; :mod:`reidkit.serve.app` includes them.

``service``: health, metrics and the caller's identity; ``search``: embed and search;
``gallery``: add, stats, thumbnails and forget; ``page``: the operator page.
"""
