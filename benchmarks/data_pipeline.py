"""The window stream against the decode bound: windows/s, peak memory per worker, batch diversity.

    python benchmarks/data_pipeline.py --shape calvin --num-cpus 2          # CALVIN Kosmos-2 shape
    python benchmarks/data_pipeline.py --shape small --num-cpus 2           # 64 px stored, 32 px out, T=8

Synthetic camera-like episodes (a smooth random field that drifts, plus sensor noise; not the
flat renders of the built-in simulator, which compress and decode unrealistically fast) are
written as Parquet episodes, PNG or JPEG. Printed:
- the decode bound: frames/s of one core turning stored frames into pixels the cheapest way the
  pipeline knows (PIL decode and resize, each pixel written once: ``put_frame``) and nothing
  else, so ``frames/s / views`` windows/s per core (stride 1: each window brings one step's
  frames, each frame decoded once);
- the decode task's rate on one core (Parquet read, checks, the shift margin, normalization);
- the batch assembly rate: windows/s of one core cutting windows out of decoded episodes into
  the batch (with the shift), the other cost every window pays, and the ceiling per core that
  the two costs leave;
- the CPU cost of putting one decoded episode into the object store (what each decode task's
  result costs), into a fresh store and again after two epochs, and where the stream's
  CPU-seconds went;
- the plain single-process loop (same transforms, no Ray) and the Ray stream over two epochs
  (the object store fresh, then warm), consumed here as a training worker consumes it: windows/s, windows/s per core used (``--num-cpus``: the decode
  tasks run on them, and so does this consumer's batch assembly on a 2-core machine) against
  the one-core bound, and batches/s with how far ahead the stream works (what a GPU step
  would draw from);
- peak memory of the consuming worker (RSS above its level before the timed epoch; the decoded
  episodes it holds are mapped from the object store and count here) against the bound
  ``(open_episodes + decode_ahead) x episode + (prefetch_batches + 1) x batch``;
- distinct episodes per batch of the plan against the ideal (a uniform shuffle of all windows);
- with ``--compare-encodings``: the decode rate of the same frames as PNG and as JPEG (q95);
- with ``--lerobot``: episodes/frames per second of one core reading a video-backed LeRobot v3
  folder (h264, a keyframe every 2 frames as LeRobot encodes) against the per-frame Parquet
  path (the same folder converted, JPEG), both decoded and resized as the decode tasks do.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import threading
import time

import numpy as np
import psutil
import pyarrow.parquet as pq
from PIL import Image

from vla.data import DataConfig, Episode, EpisodeWriter, build_window_stream, load_metadata
from vla.data.parquet_source import episode_to_windows, split_files
from vla.data.pipeline import frame_margin, load_tokenizer
from vla.data.plan import batch_diversity, ideal_diversity
from vla.data.transforms import episode_frames, put_frame
from vla.model.tokenizer import build_tiny_tokenizer

SHAPES = {  # stored px, decoded px, T, N, per-worker batch, shift static / wrist, steps per episode
    "calvin": dict(image_size=224, out_size=224, window=16, fwd=10, batch_size=4, shift=(10, 4), steps=64),
    "small": dict(image_size=64, out_size=32, window=8, fwd=1, batch_size=32, shift=(2, 1), steps=40),
}


def camera_frames(rng: np.random.Generator, steps: int, size: int, distinct: int = 8) -> np.ndarray:
    """``steps`` frames cycling through ``distinct`` camera-like images (smooth field + noise)."""
    field = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(field).resize((size * 2, size * 2), Image.BICUBIC), np.float32)
    frames = []
    for k in range(distinct):
        offset = k * size // (2 * distinct)
        view = base[offset:offset + size, offset:offset + size] + rng.normal(0, 6, (size, size, 3))
        frames.append(np.clip(view, 0, 255).astype(np.uint8))
    return np.stack([frames[i % distinct] for i in range(steps)])


def write_dataset(root: str, episodes: int, steps: int, size: int, encoding: str) -> None:
    rng = np.random.default_rng(0)
    with EpisodeWriter(root, ["static", "wrist"], image_encoding=encoding) as writer:
        for i in range(episodes):
            actions = rng.uniform(-1, 1, (steps, 7)).astype(np.float32)
            actions[:, 6] = np.sign(actions[:, 6]) + (actions[:, 6] == 0)
            images = {camera: camera_frames(rng, steps, size) for camera in ("static", "wrist")}
            writer.write(Episode(instruction=f"task {i % 7}", actions=actions, images=images), "train")


def write_lerobot_v3(root: str, episodes: int, steps: int, size: int, fps: int = 10) -> None:
    """A LeRobot v3.0 folder: one data file, each camera one h264 video holding every episode."""
    import av
    import pyarrow as pa

    rng = np.random.default_rng(0)
    keys = ["observation.images.top", "observation.images.wrist"]
    frames = {key: [camera_frames(rng, steps, size) for _ in range(episodes)] for key in keys}
    for key in keys:
        os.makedirs(f"{root}/videos/{key}/chunk-000")
        with av.open(f"{root}/videos/{key}/chunk-000/file-000.mp4", "w") as container:
            stream = container.add_stream("h264", rate=fps, options={"g": "2"})
            stream.height = stream.width = size
            stream.pix_fmt = "yuv420p"
            for pts, image in enumerate(np.concatenate(frames[key])):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = pts
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    total = episodes * steps
    actions = rng.uniform(-1, 1, (total, 7)).astype(np.float32)
    actions[:, 6] = np.where(actions[:, 6] > 0, 1.0, -1.0)
    os.makedirs(f"{root}/data/chunk-000")
    os.makedirs(f"{root}/meta/episodes/chunk-000")
    pq.write_table(pa.table({"action": pa.array(actions.tolist(), pa.list_(pa.float32(), 7)),
                             "timestamp": pa.array(np.tile(np.arange(steps) / fps, episodes), pa.float32()),
                             "frame_index": np.tile(np.arange(steps), episodes),
                             "episode_index": np.repeat(np.arange(episodes), steps),
                             "task_index": np.zeros(total, np.int64)}), f"{root}/data/chunk-000/file-000.parquet")
    starts = np.arange(episodes) * steps / fps
    pq.write_table(pa.table({"episode_index": np.arange(episodes), "length": np.full(episodes, steps),
                             "data/chunk_index": np.zeros(episodes, np.int64),
                             "data/file_index": np.zeros(episodes, np.int64),
                             **{f"videos/{key}/{name}": value for key in keys for name, value in (
                                 ("chunk_index", np.zeros(episodes, np.int64)), ("file_index", np.zeros(episodes, np.int64)),
                                 ("from_timestamp", starts), ("to_timestamp", starts + steps / fps))}}),
                   f"{root}/meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0], "task": ["pick up the block"]}), f"{root}/meta/tasks.parquet")
    features = {key: {"dtype": "video", "shape": [size, size, 3]} for key in keys}
    features["action"] = {"dtype": "float32", "shape": [7]}
    info = {"codebase_version": "v3.0", "fps": fps, "features": features, "splits": {"train": f"0:{episodes}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"}
    with open(f"{root}/meta/info.json", "w") as f:
        json.dump(info, f)


def lerobot_rates(work: str, episodes: int, steps: int, size: int, out_size: int) -> None:
    """One core: frames/s of the video decode tasks against the converted per-frame Parquet path."""
    from vla.data.converters.lerobot import convert_lerobot

    write_lerobot_v3(f"{work}/lerobot", episodes, steps, size)
    convert_lerobot(f"{work}/lerobot", f"{work}/lerobot-parquet", val_episodes=0, image_encoding="jpeg")
    shape = dict(window_size=1, fwd_pred_next_n=1, image_size=out_size, tokenizer_dir=f"{work}/tok", train=False)
    video = build_window_stream(DataConfig(path=f"{work}/lerobot", format="lerobot", lerobot_val_fraction=0), "train",
                                **shape)
    parquet = build_window_stream(DataConfig(path=f"{work}/lerobot-parquet"), "train", **shape)
    for name, stream in (("LeRobot h264 video", video), ("Parquet JPEG frames", parquet)):
        start = time.perf_counter()
        for address in stream.index.addresses:
            stream.reader(*address)
        seconds = time.perf_counter() - start
        frames = 2 * int(stream.index.num_steps.sum())
        print(f"{name:19s} decode : {frames / seconds:8.0f} frames/s on one core "
              f"({len(stream.index.addresses) / seconds:.1f} episodes/s)")


def decode_rate(root: str, size: int, seconds: float = 3.0) -> float:
    """The decode bound: frames/s of one core turning the stored frames of the first shard into
    pixels the cheapest way the pipeline knows (PIL decode, resize, each pixel written once into
    a preallocated array: ``put_frame``), and nothing else (no Parquet read, checks, margin, Ray)."""
    meta = load_metadata(root)
    frames = pq.read_table(f"{root}/{meta.splits['train'].shards[0].file}",
                           columns=["image_static"])["image_static"].combine_chunks().flatten().to_pylist()[:64]
    pixels = episode_frames(len(frames), 1, size, 0)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for step, data in enumerate(frames):
            with Image.open(io.BytesIO(data)) as img:
                put_frame(pixels, step, 0, img, 0)
        count += len(frames)
    return count / (time.perf_counter() - start)


def decode_task_rate(stream) -> float:
    """Frames/s of one core running the decode task's body (read the episode's Parquet row, check
    it, decode every frame with its margin, normalize the actions) over the split's episodes."""
    start = time.perf_counter()
    for address in stream.index.addresses[:16]:
        stream.reader(*address)
    frames = len(stream.data_cfg.cameras) * int(stream.index.num_steps[:16].sum())
    return frames / (time.perf_counter() - start)


def plain_loop(cfg: DataConfig, shape: dict, tokenizer_dir: str) -> int:
    """Every window of every episode through the same transforms, in this process, a batch at a time."""
    meta = load_metadata(cfg.path)
    chain = episode_to_windows(cfg, meta, window_size=shape["window"], fwd_pred_next_n=shape["fwd"],
                               image_size=shape["out_size"], tokenizer=load_tokenizer(tokenizer_dir), train=True)
    windows = 0
    for file in split_files(cfg.path, meta, "train", cfg.cameras):
        for rows in pq.ParquetFile(file).iter_batches(batch_size=1):
            for row in rows.to_pylist():
                episode = chain.tokenize(chain.decode({**row, "path": file}))
                starts = chain.batcher.cut.starts(len(episode["actions"])).tolist()
                for begin in range(0, len(starts), cfg.batch_size):
                    part = starts[begin:begin + cfg.batch_size]
                    batch = chain.batcher([episode] * len(part), part, [row["episode_id"]] * len(part), 0)
                    windows += len(batch["actions"])
    return windows


class PeakRSS:
    """Samples this process's RSS every 20 ms in a thread."""

    def __init__(self):
        self.process = psutil.Process(os.getpid())
        self.baseline = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return (self.peak - self.baseline) / 2**20


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its children (the local Ray node: raylet, GCS,
    the workers that run the decode tasks), alive or ended."""
    processes = [psutil.Process(os.getpid())]
    processes += processes[0].children(recursive=True)
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + (times.children_user + times.children_system if process is processes[0]
                                              else 0.0)
    return total


def object_store_put_seconds(stream, episodes: int = 4) -> float:
    """CPU seconds of ``ray.put`` of one decoded episode into the (fresh) object store."""
    import ray

    decoded = [stream.reader(*address) for address in stream.index.addresses[:episodes]]
    start = time.process_time()
    refs = [ray.put(episode) for episode in decoded]
    seconds = (time.process_time() - start) / episodes
    del refs
    return seconds


def assembly_rate(stream, episodes: int = 4) -> float:
    """Windows/s of one core cutting (and augmenting) batches from episodes already decoded."""
    decoded = [stream.tokenize(stream.reader(*address)) for address in stream.index.addresses[:episodes]]
    windows = [(e, s) for e, episode in enumerate(decoded) for s in stream.batcher.cut.starts(len(episode["actions"]))]
    size = stream.data_cfg.batch_size
    start = time.perf_counter()
    for begin in range(0, len(windows), size):
        part = windows[begin:begin + size]
        stream.batcher([decoded[e] for e, _ in part], [s for _, s in part], [e for e, _ in part], 0)
    return len(windows) / (time.perf_counter() - start)


def timed(fn, *args) -> tuple[int, float]:
    start = time.perf_counter()
    windows = fn(*args)
    return windows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="calvin")
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--encoding", choices=["png", "jpeg"], default="jpeg")
    parser.add_argument("--num-cpus", type=int, default=2, help="Ray CPUs (decode tasks run on them)")
    parser.add_argument("--open-episodes", type=int, default=DataConfig.open_episodes)
    parser.add_argument("--compare-encodings", action="store_true", help="decode rate of PNG vs JPEG")
    parser.add_argument("--lerobot", action="store_true", help="video-backed LeRobot v3 vs per-frame Parquet decode")
    args = parser.parse_args()
    shape = SHAPES[args.shape]

    import ray

    work = tempfile.mkdtemp(prefix="vla_bench_")
    write_dataset(f"{work}/ds", args.episodes, shape["steps"], shape["image_size"], args.encoding)
    build_tiny_tokenizer().save_pretrained(f"{work}/tok")
    cfg = DataConfig(path=f"{work}/ds", batch_size=shape["batch_size"], shift_static=shape["shift"][0],
                     shift_wrist=shape["shift"][1], open_episodes=args.open_episodes)
    stream = build_window_stream(cfg, "train", window_size=shape["window"], fwd_pred_next_n=shape["fwd"],
                                 image_size=shape["out_size"], tokenizer_dir=f"{work}/tok", train=True)
    views = len(cfg.cameras)
    print(f"data: {args.episodes} episodes x {shape['steps']} steps, {views} cameras, {shape['image_size']} px "
          f"{args.encoding.upper()} -> {shape['out_size']} px, window {shape['window']}, chunk {shape['fwd']}, "
          f"batch {shape['batch_size']}, open_episodes {cfg.open_episodes}; load average {os.getloadavg()[0]:.1f}")

    rate = decode_rate(cfg.path, shape["out_size"])
    bound = rate / views
    print(f"decode bound, one core    : {rate:8.0f} frames/s -> {bound:.0f} windows/s per core "
          f"(stride 1: {views} new frames per window)")
    task = decode_task_rate(stream)
    print(f"decode task, one core     : {task:8.0f} frames/s ({task / rate:.2f} x the bound: Parquet read, checks, "
          f"margin, normalization)")
    assembly = assembly_rate(stream)
    print(f"batch assembly, one core  : {assembly:8.0f} windows/s (cutting, shifting, copying decoded frames; "
          f"{bound / assembly:.2f} of a window's decode time)")
    ceiling = 1 / (bound / (task / views) + bound / assembly)
    print(f"ceiling per core          : {ceiling:8.2f} x the bound (a core that decodes a window's frames in decode "
          f"tasks and copies it into a batch, nothing else)")
    plain_n, plain_s = timed(plain_loop, cfg, shape, f"{work}/tok")
    print(f"plain single-process loop : {plain_n / plain_s:8.0f} windows/s ({plain_n} windows, {plain_s:.1f} s; "
          f"{plain_n / plain_s / bound:.2f} x the one-core bound)")

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    put = object_store_put_seconds(stream)
    episode_decode_s = stream.index.num_steps[0] * views / task
    print(f"object store put, one core: {put * 1e3:8.1f} ms of CPU per decoded episode into a fresh object store = "
          f"{put / episode_decode_s:.2f} of its decode time (what a decode task's result costs)")
    for _, _ in zip(range(2), stream.batches(epoch=99)):  # warm up the Ray workers (imports), not timed
        pass
    for epoch, store in enumerate(("fresh", "warm")):  # a fresh object store's pages fault on first use
        memory, cpu = PeakRSS(), cpu_seconds()
        ray_n, ray_s = timed(lambda: sum(len(b["actions"]) for b in stream.batches(epoch=epoch)))
        peak, busy = memory.stop(), cpu_seconds() - cpu
        per_core = ray_n / ray_s / args.num_cpus
        print(f"Ray stream, epoch {epoch} ({store} object store, {args.num_cpus} CPUs): {ray_n / ray_s:8.0f} windows/s "
              f"({ray_n} windows, {ray_s:.1f} s; {ray_n / ray_s / (plain_n / plain_s):.2f} x the plain loop)")
        print(f"  per CPU given to Ray    : {per_core:8.0f} windows/s = {per_core / bound:.2f} x the one-core decode "
              f"bound (decode tasks, and this consumer's batch assembly beside them)")
        print(f"  per core-second used    : {ray_n / busy:8.0f} windows/s = {ray_n / busy / bound:.2f} x the one-core "
              f"decode bound ({busy:.1f} CPU-s of this process and its Ray processes in {ray_s:.1f} s: "
              f"{busy / ray_s:.2f} cores busy)")
        if epoch == 0:
            first_peak = peak
    rest = cpu_seconds()
    time.sleep(3.0)
    rest = (cpu_seconds() - rest) / 3.0
    work = ray_n * (views / task + 1 / assembly)
    print(f"  where epoch 1's CPU-s went: {work:6.1f} decoding and assembling (the one-core rates above), "
          f"{rest * ray_s:.1f} the Ray node's background ({rest:.2f} cores at rest), "
          f"{busy - work - rest * ray_s:.1f} the rest (object store puts, task scheduling)")
    print(f"  for a GPU step          : {ray_n / ray_s / cfg.batch_size:8.1f} batches of {cfg.batch_size} per second; "
          f"ready ahead: {cfg.prefetch_batches} assembled batches (data.prefetch_batches), "
          f"{cfg.decode_ahead} episodes decoding (data.decode_ahead)")
    peak = max(first_peak, peak)
    put = object_store_put_seconds(stream)
    print(f"object store put, warm    : {put * 1e3:8.1f} ms of CPU per decoded episode after two epochs = "
          f"{put / episode_decode_s:.2f} of its decode time")

    margin = frame_margin(cfg, train=True)
    episode_mb = shape["steps"] * views * 3 * (shape["out_size"] + 2 * margin) ** 2 / 2**20
    batch_mb = shape["batch_size"] * shape["window"] * views * 3 * shape["out_size"] ** 2 / 2**20
    limit = (cfg.open_episodes + cfg.decode_ahead) * episode_mb + (cfg.prefetch_batches + 1) * batch_mb
    print(f"peak memory, worker       : {peak:8.0f} MB above baseline (bound {limit:.0f} MB = "
          f"({cfg.open_episodes} + {cfg.decode_ahead}) x {episode_mb:.1f} MB episodes (with a {margin} px margin) + "
          f"{cfg.prefetch_batches + 1} x {batch_mb:.1f} MB batches)")

    ideal = ideal_diversity(stream.index, cfg.stride, cfg.batch_size)
    for open_episodes in sorted({1, 8, cfg.open_episodes}):
        cfg.open_episodes = open_episodes
        plan = stream.plan(epoch=0)
        diversity = batch_diversity(plan, cfg.batch_size)
        print(f"batch diversity, open {open_episodes:3d}: {diversity:8.2f} distinct episodes per batch of "
              f"{cfg.batch_size} (ideal {ideal:.2f}, ratio {diversity / ideal:.2f})")

    if args.compare_encodings:
        for encoding in ("png", "jpeg"):
            root = f"{work}/enc-{encoding}"
            write_dataset(root, 2, shape["steps"], shape["image_size"], encoding)
            size = sum(os.path.getsize(f) for f in split_files(root, load_metadata(root), "train", cfg.cameras)) / 2**21
            print(f"{encoding.upper():4s} decode, one core   : {decode_rate(root, shape['out_size']):8.0f} frames/s "
                  f"({size:.1f} MB per episode stored)")
    if args.lerobot:
        lerobot_rates(work, 8, shape["steps"], shape["image_size"], shape["out_size"])
    ray.shutdown()


if __name__ == "__main__":
    main()
