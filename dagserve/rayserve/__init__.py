"""dagserve as a Ray Serve application that Ray's own tools deploy: the HTTP ingress as a Serve
deployment (``ingress_deployment.py``, ``RayBackend(ingress_replicas=N)``), the application builder that
``serve deploy`` calls (``application.py``), and the files ``dagserve build`` writes
(``config_files.py``: a Serve config file, a KubeRay ``RayService``).

It sits above both the HTTP layer (whose ingress it deploys) and the Ray backend (whose
deployments it describes). Importing this package imports nothing heavy; ``ingress_deployment.py`` imports
Ray Serve and is loaded only when ingress replicas are asked for.
"""
