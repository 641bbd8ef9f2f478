"""The small in-memory corpus the example web app searches, and the embedder learns from."""

from __future__ import annotations

__all__ = ["DOCUMENTS"]

DOCUMENTS: list[str] = [
    "Ray Serve deploys Python models as scalable services",
    "Batching groups concurrent requests into one model call",
    "A GPU share lets several replicas use one graphics card",
    "Autoscaling adds replicas when request queues grow",
    "Starlette is a lightweight ASGI framework for web services",
    "Uvicorn is an ASGI server that runs Starlette applications",
    "The digits data set has 8 by 8 images of handwritten numbers",
    "Logistic regression is a linear model for classification",
    "Random forests average the votes of many decision trees",
    "Nearest neighbours classify by the labels of similar examples",
    "Bread needs flour, water, salt and yeast",
    "Sourdough bread rises slowly with wild yeast",
    "Pasta is boiled in salted water until al dente",
    "Tomato sauce simmers with garlic and olive oil",
    "Espresso is coffee brewed under pressure",
    "A latte is espresso with steamed milk",
    "Green tea is brewed with water below boiling",
    "The marathon is a running race of 42 kilometres",
    "Cyclists ride in a group called the peloton",
    "Swimming strokes include crawl, breaststroke and butterfly",
    "Tennis matches are played in sets of games",
    "Hiking boots need a firm sole for rocky trails",
    "Tents keep campers dry when it rains at night",
    "A compass and a map help hikers find the trail",
]
