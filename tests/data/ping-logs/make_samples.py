"""Write the sample ping logs of this folder (the record of how they were made).

    .venv/bin/python tests/data/ping-logs/make_samples.py tests/data/ping-logs

Every sample is written as the tool and the PowerShell loop described in
README.md would have written it (encodings, line ends, stamp formats). The
script refuses to overwrite a file: the samples are frozen test data.
"""

from __future__ import annotations

import sys
from pathlib import Path

GUEST = "192.168.1.5"


def windows_ja() -> str:
    """The write-up's reverse migration: 3 timeouts at 13:02:39-41, no unreachable.

    Loop (Windows 8.1, Japanese): ``while ($true) { $t = Get-Date -Format
    "yyyy/MM/dd HH:mm:ss"; ping -n 1 -w 500 192.168.1.5 | ForEach-Object {
    "$t $_" } | Out-File -Append -Encoding default ping.log; Start-Sleep
    -Milliseconds 500 }``: every output line of one ping carries the time it
    was sent.
    """
    lines = []
    for second in range(30, 51):
        stamp = f"2016/01/23 13:02:{second:02d}"
        lost = second in (39, 40, 41)
        rtt = 1 if second % 4 else 2
        block = [
            "",
            f"{GUEST} に ping を送信しています 32 バイトのデータ:",
            "要求がタイムアウトしました。"
            if lost
            else f"{GUEST} からの応答: バイト数 =32 時間 ={rtt}ms TTL=128",
            "",
            f"{GUEST} の ping 統計:",
            "    パケット数: 送信 = 1、受信 = 0、損失 = 1 (100% の損失)、"
            if lost
            else "    パケット数: 送信 = 1、受信 = 1、損失 = 0 (0% の損失)、",
        ]
        if not lost:
            block += [
                "ラウンド トリップの概算時間 (ミリ秒):",
                f"    最小 = {rtt}ms、最大 = {rtt}ms、平均 = {rtt}ms",
            ]
        lines += [f"{stamp} {line}" for line in block]
    return "\r\n".join(lines) + "\r\n"


WINDOWS_EN = """\
2016/01/23 13:02:30.015 Reply from 10.0.0.5: bytes=32 time=1ms TTL=128
2016/01/23 13:02:31.021 Reply from 10.0.0.5: bytes=32 time<1ms TTL=128
2016/01/23 13:02:32.030 Reply from 10.0.0.5: bytes=32 time=2ms TTL=128
2016/01/23 13:02:33.034 Request timed out.
2016/01/23 13:02:34.046 Request timed out.
2016/01/23 13:02:35.052 Reply from 10.0.0.1: Destination host unreachable.
2016/01/23 13:02:36.060 Reply from 10.0.0.1: Destination host unreachable.
2016/01/23 13:02:37.071 PING: transmit failed. General failure.
2016/01/23 13:02:38.080 General failure.
2016/01/23 13:02:39.088 Reply from 10.0.0.5: bytes=32 time=3ms TTL=128
2016/01/23 13:02:40.093 Reply from 10.0.0.5: bytes=32 time<1ms TTL=128
2016/01/23 13:02:41.101 Reply from 10.0.0.5: bytes=32 time=1ms TTL=128
2016/01/23 13:02:41.500 migration finished?
Ping statistics for 10.0.0.5:
"""


def _ipu(stamp_us: int, text: str) -> str:
    return f"[{stamp_us // 1_000_000}.{stamp_us % 1_000_000:06d}] {text}"


def iputils_wrap() -> str:
    """``ping -D -i 0.2 10.0.0.5``, the part of a 3.6 h log around icmp_seq 65535 -> 0.

    icmp_seq 65534, 65535, 0 and 4 have no line (implicit timeouts), 3 got a
    Destination Host Unreachable from the router, 7 a duplicate reply.
    """
    t0 = 1_700_000_000_000_000  # us, send of icmp_seq=65530
    lines = []
    for k in range(16):
        seq = (65530 + k) % 65536
        send = t0 + k * 200_000 + 7 * k  # the schedule drifts 7 us per echo
        if seq in (65534, 65535, 0, 4):
            continue
        if seq == 3:
            lines.append(
                _ipu(send + 1_830, f"From 10.0.0.1 icmp_seq={seq} Destination Host Unreachable")
            )
            continue
        rtt = 312 + (k * 37) % 90
        text = f"64 bytes from 10.0.0.5: icmp_seq={seq} ttl=64 time=0.{rtt:03d} ms"
        lines.append(_ipu(send + rtt + 25, text))
        if seq == 7:
            lines.append(_ipu(send + rtt + 25 + 140, text + " (DUP!)"))
    return "\n".join(lines) + "\n"


def iputils_outstanding() -> str:
    """``ping -D -O 10.0.0.5`` from its first line to Ctrl-C.

    4 and 5 unanswered ("no answer yet"), 5's reply comes 1250 ms late, 9
    unanswered, 10 sent just before Ctrl-C (the summary counts it, no line).
    """
    t0 = 1_700_000_100_000_000
    send = {k: t0 + (k - 1) * 1_000_000 + 10 + k for k in range(1, 11)}
    printed: list[tuple[int, str]] = []  # (print time in us, text)

    def reply(k: int, rtt_us: int, shown: str) -> None:
        when = send[k] + rtt_us + 30
        printed.append((when, f"64 bytes from 10.0.0.5: icmp_seq={k} ttl=64 time={shown} ms"))

    reply(1, 402, "0.402")
    reply(2, 388, "0.388")
    reply(3, 441, "0.441")
    printed.append((send[5] + 5, "no answer yet for icmp_seq=4"))
    printed.append((send[6] + 5, "no answer yet for icmp_seq=5"))
    reply(5, 1_250_000, "1250")
    reply(6, 512, "0.512")
    reply(7, 420, "0.420")
    reply(8, 397, "0.397")
    printed.append((send[10] + 5, "no answer yet for icmp_seq=9"))
    lines = ["PING 10.0.0.5 (10.0.0.5) 56(84) bytes of data."]
    lines += [_ipu(when, text) for when, text in sorted(printed)]
    lines += [
        "^C",
        "--- 10.0.0.5 ping statistics ---",
        "10 packets transmitted, 7 received, 30% packet loss, time 9012ms",
        "rtt min/avg/max/mdev = 0.388/178.951/1250.000/437.019 ms, pipe 2",
    ]
    return "\n".join(lines) + "\n"


def fping_loop() -> str:
    """``fping -D -l -p 500 10.0.0.5 10.0.0.6 2>&1`` (line-buffered, as on a terminal).

    10.0.0.5 loses [5]-[8]: [6] and [7] are answered by the router's ICMP Host
    Unreachable (printed before their "timed out"); 10.0.0.6 answers all.
    """
    t0 = 1_700_000_200_000_000
    lines = []
    received = {"10.0.0.5": 0, "10.0.0.6": 0}
    total = {"10.0.0.5": 0, "10.0.0.6": 0}
    for k in range(12):
        for offset_us, host in ((0, "10.0.0.5"), (10_000, "10.0.0.6")):
            send = t0 + k * 500_000 + offset_us
            total[host] += 1
            lost = host == "10.0.0.5" and 5 <= k <= 8
            if lost:
                if k in (6, 7):
                    lines.append(
                        (
                            "",
                            send + 2_000,
                            f"ICMP Host Unreachable from 10.0.0.1 for ICMP Echo sent to {host}",
                        )
                    )
                loss = (total[host] - received[host]) * 100 // total[host]
                lines.append(
                    (
                        f"[{(send + 500_000) / 1e6:.5f}] ",
                        send + 500_000,
                        f"{host} : [{k}], timed out (0.33 avg, {loss}% loss)",
                    )
                )
                continue
            received[host] += 1
            rtt = 310 + (k * 29 + offset_us // 1000) % 70
            recv = send + rtt
            loss = (total[host] - received[host]) * 100 // total[host]
            lines.append(
                (
                    f"[{recv / 1e6:.5f}] ",
                    recv,
                    f"{host} : [{k}], 64 bytes, 0.{rtt:03d} ms (0.33 avg, {loss}% loss)",
                )
            )
    lines.sort(key=lambda item: item[1])
    text = [prefix + body for prefix, _when, body in lines]
    text += [
        "",
        "10.0.0.5 : xmt/rcv/%loss = 12/8/33%, min/avg/max = 0.31/0.34/0.38",
        "10.0.0.6 : xmt/rcv/%loss = 12/12/0%, min/avg/max = 0.32/0.35/0.38",
    ]
    return "\n".join(text) + "\n"


def main(folder: Path) -> None:
    samples = {
        "windows-ja.utf8.log": windows_ja().encode("utf-8"),
        "windows-ja.cp932.log": windows_ja().encode("cp932"),
        # Windows PowerShell 5's ">" / Out-File default: UTF-16 LE with a BOM.
        "windows-ja.utf16le.log": b"\xff\xfe" + windows_ja().encode("utf-16-le"),
        "windows-en.log": WINDOWS_EN.replace("\n", "\r\n").encode("ascii"),
        "iputils-D-wrap.log": iputils_wrap().encode("ascii"),
        "iputils-D-O.log": iputils_outstanding().encode("ascii"),
        "fping-D-l.log": fping_loop().encode("ascii"),
    }
    for name, data in samples.items():
        with open(folder / name, "xb") as handle:
            handle.write(data)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
