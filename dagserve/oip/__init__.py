"""The Open Inference Protocol (KServe "V2"), apart from any transport: ``codec.py`` (tensors to
numpy and back, the binary data framing), ``model.py`` (a graph as a model: its tensors, the
payload a request's tensors make, the tensors its output makes). The REST routes
(``dagserve.http.oip_rest``) and the gRPC service (``dagserve.http.grpc_server``) use both.
``grpc_predict_v2_pb2.py`` is generated from ``grpc_predict_v2.proto`` (see that file)."""
