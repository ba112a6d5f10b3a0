"""hpcml.comm's point-to-point and control-message helpers on 2-4 ranks, against what each
rank sent (every rank checks what it received)."""
import numpy as np

from hpcml import comm as hc
from mpi_helpers import all_ranks


def test_ring_exchange_blocking_and_nonblocking(comm):
    p, r = comm.Get_size(), comm.Get_rank()
    right, left = (r + 1) % p, (r - 1) % p
    mine = np.arange(7, dtype=np.float64) + 100 * r
    got = np.zeros(7)
    hc.sendrecv(mine, right, got, left, sendtag=5, recvtag=5, comm=comm)
    all_ranks(comm, np.array_equal(got, np.arange(7) + 100 * left), f"sendrecv got {got}")
    got2 = np.zeros(7)
    reqs = [hc.irecv(got2, left, tag=6, comm=comm), hc.isend(mine * 2, right, tag=6, comm=comm)]
    hc.wait_all(reqs)
    all_ranks(comm, np.array_equal(got2, 2 * (np.arange(7) + 100 * left)), "isend/irecv")


def test_send_recv_probe_with_tags(comm):
    p, r = comm.Get_size(), comm.Get_rank()
    if r == 0:
        seen = []
        for _ in range(p - 1):
            src, tag, count = hc.probe(comm=comm, dtype=np.int64)
            buf = np.empty(count, np.int64)
            seen.append((hc.recv(buf, src, tag, comm), buf.tolist()))
        ok = sorted(seen) == sorted(((s, 10 + s, s + 1), list(range(s, 2 * s + 1)))
                                    for s in range(1, p))
    else:
        hc.send(np.arange(r, 2 * r + 1, dtype=np.int64), 0, tag=10 + r, comm=comm)
        ok = True
    all_ranks(comm, ok, "rank 0 received every rank's message with its tag and length")


def test_control_messages_and_split(comm):
    p, r = comm.Get_size(), comm.Get_rank()
    got = hc.bcast_object({"step": 7, "who": [r]} if r == p - 1 else None, root=p - 1,
                          comm=comm)
    all_ranks(comm, got == {"step": 7, "who": [p - 1]}, f"bcast_object gave {got}")
    at0 = hc.gather_objects({"rank": r}, comm=comm)
    all_ranks(comm, at0 == ([{"rank": i} for i in range(p)] if r == 0 else None),
              f"gather_objects gave {at0}")
    everywhere = hc.gather_objects(r * r, root=None, comm=comm)
    all_ranks(comm, everywhere == [i * i for i in range(p)], f"allgather gave {everywhere}")
    sub = hc.split(comm, r % 2, key=-r)  # reversed order inside each colour
    members = hc.gather_objects(r, root=None, comm=sub)
    all_ranks(comm, members == sorted((q for q in range(p) if q % 2 == r % 2), reverse=True),
              f"split members {members}")
    all_ranks(comm, hc.slowest(float(r), comm) == p - 1, "slowest rank's time")
    sub.Free()
