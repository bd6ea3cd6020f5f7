"""The WAN bench's rounds and capped run: medians, arguments, the steady rate of a link, the capped report."""

from __future__ import annotations

from bench import wan, wan_cap


def test_medians_over_interleaved_rounds_with_the_range():
    rounds = [{"project": {"wall": w, "site_bytes": b}} for w, b in ((30.0, 300), (10.0, 100), (20.0, 200))]
    result = wan.medians(rounds)["project"]
    assert result == {"wall": 20.0, "site_bytes": 200, "wall_min": 10.0, "wall_max": 30.0}


def test_rounds_and_cap_arguments():
    args = wan.parse_args([])
    assert (args.rounds, args.cap_mbit, args.cap_copies) == (3, 80.0, 2)
    assert wan.parse_args(["--cap-mbit", "0"]).cap_mbit == 0


def test_steady_rate_leaves_out_the_start_and_the_end_of_the_copies():
    # 10 s idle at the start, then 100 bytes/s for 100 s, then 20 s idle (registration).
    samples = [(float(t), 0) for t in range(0, 10)]
    samples += [(10.0 + t, 100 * t) for t in range(0, 101)]
    samples += [(111.0 + t, 10_000) for t in range(0, 20)]
    assert wan_cap.steady_rate(samples) == 100.0
    assert wan_cap.steady_rate(samples[:1]) == 0.0 and wan_cap.steady_rate([(0.0, 5), (1.0, 5)]) == 0.0


def test_capped_report_puts_each_region_beside_the_cap():
    result = {"wall": 60.0, "images": 2, "size": 256 * 1024 * 1024, "rates": {"RegionA": 10e6, "RegionB": 8e6},
              "sent": {"RegionA": 540 * 1024 * 1024, "RegionB": 540 * 1024 * 1024}}
    lines = wan_cap.report(result, 80.0)
    assert "80 Mbit/s" in lines[0]
    assert "1.00 x cap" in lines[1] and lines[1].endswith("met")
    assert "0.80 x cap" in lines[2] and lines[2].endswith("MISSED")


def test_quarters_show_a_rate_that_fell_off():
    # 100 bytes/s for the first half of the bytes, then 50 bytes/s.
    samples = [(float(t), 100 * t) for t in range(0, 51)]
    samples += [(50.0 + t, 5000 + 50 * t) for t in range(1, 101)]
    first, second, third, fourth = wan_cap.quarters(samples)
    assert first == second == 100.0 and third == fourth == 50.0


def test_only_the_capped_run_with_no_rounds():
    assert wan.parse_args(["--rounds", "0"]).rounds == 0
    assert wan.medians([]) == {}
