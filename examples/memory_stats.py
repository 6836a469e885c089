"""A compressed in-memory queue and its live stats."""

from __future__ import annotations

import spoolq


def main() -> None:
    with spoolq.SyncQueue.create(":memory:", compressor="zstd") as q:
        for i in range(500):
            q.put({"event": "page_view", "user": i % 17, "path": f"/articles/{i % 40}",
                   "agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
                   "headers": {"accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8",
                               "accept-language": "en-GB,en;q=0.7,de;q=0.3",
                               "referer": f"https://example.org/articles/{i % 40}?ref=home"}})
        s = q.stats
        print(f"{s['count']} events, {s['raw_size_bytes']} bytes raw, "
              f"{s['compressed_size_bytes']} bytes stored: {s['compression_ratio_pct']}% saved")
        q.get_many(100)
        print(f"after reading 100: count={q.stats['count']} gets={q.stats['gets']}")


if __name__ == "__main__":
    main()
