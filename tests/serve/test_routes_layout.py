"""The routes live in one APIRouter module per concern; app.py only includes them."""

from __future__ import annotations

import ast
import inspect

from fastapi import APIRouter
from fastapi.routing import APIRoute

from reidkit.serve import app as app_module
from reidkit.serve.routes import gallery, page, search, service


def test_each_concern_has_its_router_and_app_declares_no_route() -> None:
    routes = {
        module.__name__.rsplit(".", 1)[1]: {
            (method, route.path)
            for route in module.router.routes
            if isinstance(route, APIRoute)
            for method in route.methods
        }
        for module in (service, search, gallery, page)
        if isinstance(module.router, APIRouter)
    }
    assert routes == {
        "service": {
            ("GET", "/healthz"),
            ("HEAD", "/healthz"),
            ("GET", "/metrics"),
            ("GET", "/v1/me"),
        },
        "search": {("POST", "/v1/embed"), ("POST", "/v1/search")},
        "gallery": {
            ("POST", "/v1/gallery"),
            ("DELETE", "/v1/gallery"),
            ("GET", "/v1/gallery/stats"),
            ("GET", "/v1/crops/{crop_id}"),
        },
        "page": {("GET", "/")},
    }
    tree = ast.parse(inspect.getsource(app_module))
    decorators = [
        ast.unparse(d)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for d in node.decorator_list
    ]
    assert not [d for d in decorators if d.split("(")[0].endswith((".get", ".post", ".delete"))]
