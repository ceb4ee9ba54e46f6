"""The pod network of the process runner: which range and which link a cluster directory gets."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from heterotrain_e2e.cluster import podnet
from heterotrain_e2e.procnode.ipam import IPAllocator

LOCAL_ROUTES = """\
local 127.0.0.0/8 dev lo proto kernel scope host src 127.0.0.1
local 127.0.0.1 dev lo proto kernel scope host src 127.0.0.1
broadcast 192.0.2.255 dev eth0 proto kernel scope link src 192.0.2.2
local 198.18.4.0/22 dev htpod0000aaaa scope host
local 198.19.0.7 dev lo scope host
"""


def test_interface_name_is_stable_short_and_per_directory(tmp_path: Path):
    a, b = podnet.interface_name(tmp_path / "a"), podnet.interface_name(tmp_path / "b")
    assert a == podnet.interface_name(tmp_path / "a")
    assert a != b
    assert len(a) <= 13 and a.startswith("htpod")  # + "p" for the veth peer: within Linux's 15


def test_taken_ranges_reads_only_the_benchmarking_range():
    assert podnet.taken_ranges(LOCAL_ROUTES) == [
        ipaddress.IPv4Network("198.18.4.0/22"),
        ipaddress.IPv4Network("198.19.0.7/32"),
    ]


def test_choose_block_skips_blocks_in_use_and_stays_in_range(tmp_path: Path):
    d = tmp_path / "cluster"
    first = podnet.choose_block(d, [])
    assert first.prefixlen == podnet.PREFIX and first.subnet_of(podnet.BENCHMARK_NET)
    assert podnet.choose_block(d, []) == first  # the same directory asks for the same block first
    taken = [first, ipaddress.IPv4Network(str(first.network_address + 1024 + 5) + "/32")]
    second = podnet.choose_block(d, taken)
    assert not any(second.overlaps(t) for t in taken)
    with pytest.raises(podnet.PodNetworkError, match="already in use"):
        podnet.choose_block(d, podnet.blocks())


def test_delete_refuses_links_that_are_not_a_clusters():
    with pytest.raises(ValueError, match="not a pod network link"):
        podnet.delete("eth0")


def test_ipam_accepts_the_benchmarking_range_and_refuses_routed_ranges(tmp_path: Path):
    a = IPAllocator(None, "198.18.4.0/22")
    assert a.allocate("u1") == "198.18.4.1"
    for bad in ("10.0.0.0/24", "198.20.0.0/22", "192.168.1.0/24"):
        with pytest.raises(ValueError, match=r"neither loopback nor inside 198\.18\.0\.0/15"):
            IPAllocator(None, bad)
