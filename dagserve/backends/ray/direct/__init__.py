"""Direct transport: the ingress calls replicas itself, over Unix sockets on its own Ray node
and over authenticated TCP on the others.

A Serve handle call costs about 1 ms and ~0.6 ms of the caller's CPU on a 2-core machine (the
router, gRPC, cloudpickle); a framed pickle over a Unix socket costs ~35 us. So when the ingress
and a node's replicas share a machine, dagserve sends the calls itself and Serve keeps doing
everything else: it places, starts, health-checks, replaces and scales the replicas.

How it works:

* Every replica listens on a Unix socket named after its Serve replica id, in a directory per
  (Ray cluster, application, deployment, Ray node) under ``$TMPDIR/dagserve-<uid>/`` (mode 0700: only the
  user that runs Ray can connect, the same trust Ray itself asks for).
* The ingress keeps a :class:`DirectPool` per node: it watches the directory, connects to each
  replica, sends each call to the replica with the fewest calls in flight, holds at most
  ``max_ongoing_requests`` calls on a replica, and queues the rest (up to ``max_queued_requests``,
  then :class:`QueueFull`). A freed slot goes straight to the oldest queued call.
* The replica enforces ``max_ongoing_requests`` too, over every caller (several ingresses, calls
  Serve routed): a full replica refuses a call (``BUSY``: it never ran; the pool sends it to
  another replica or queues it first in line) and tells the refused caller when a slot frees
  (``ROOM``). Calls Serve routes wait in the replica for a slot (:meth:`ReplicaServer.admit`).
* A replica that Serve stops (scale-down, update) refuses new calls from the moment the stop
  begins (``REJECTED``: the pool sends them elsewhere, they never ran) and finishes the ones it
  holds. A replica that dies fails the calls it held with :class:`ReplicaLost` (retried for nodes
  with ``retries=N``).
* A cancelled call (deadline, timeout, client gone) sends ``CANCEL``: the replica cancels it.

Frames are an 8-byte big-endian length and a pickled envelope. Requests: ``(CALL, id, payload)``
where ``payload`` is the pickled ``(header, args, kwargs)``, ``(CANCEL, id)``, ``(STATS, id)``.
Answers: ``(id, OK | ERROR, value)`` with the value (or exception) pickled apart, so one the caller
cannot load fails its call only; ``(id, REJECTED | BUSY, None)``; notices ``(0, DRAINING, None)``
when the replica stops and ``(0, ROOM, None)`` when it has a slot again. Values pickle with
:mod:`pickle` (protocol 5), and with cloudpickle for what it cannot take (lambdas) or names
``__main__`` (the other process's ``__main__`` is not ours).

Both ends check, before reading a frame, that the other process runs as the same user
(``SO_PEERCRED``), and bound what they read (:class:`FrameLimits`): a call whose arguments or
result pickle larger than ``max_bytes`` fails with a :class:`~dagserve.NodeError` naming the node
(``error_type="FrameTooLarge"``) before anything is sent; a frame announced larger, or one that
does not arrive whole within ``timeout_s``, closes the connection (its calls fail as lost).

Across Ray nodes (another raylet on the same host counts as another machine): each replica also
listens on TCP on its node's Ray address when the cluster uses Ray's token authentication (never
otherwise, never on every interface), and announces the address in Ray's KV store (``registry``);
each TCP connection passes an HMAC challenge-response keyed by the token (``auth``) before any
frame is read. Callers prefer replicas on their own Ray node while one has room.

Its modules, one concern each: ``protocol`` (frames and their bounds, op codes, pickling, the
peer-uid check), ``auth`` (the token handshake), ``registry`` (cross-node addresses), ``pool`` (the caller side: :class:`~.pool.DirectPool`, :class:`~.pool.DirectCall`),
``replica_server`` (the replica side: :class:`~.replica_server.ReplicaServer`) and ``directory``
(the private socket directory of a node's replicas, and asking them for stats). The caller's
replica picking and queue are :class:`dagserve.runtime.replica_slots.ReplicaSlots`, which the local
backend uses too.

This package imports no Ray (``dumps`` borrows Ray's cloudpickle when it must); the backend decides
where it applies (see ``RayBackend``).
"""
