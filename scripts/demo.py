"""`make demo`: start the system locally, run a sample image job and a sample video job through
the REST API, print answers, ids, trace ids and stage timings, then stop what was started."""

import sys
import time

import httpx

from scripts.localstack import LocalStack
from scripts.sample_media import sample_jpeg, sample_mp4


def run_job(stack: LocalStack, filename: str, data: bytes, prompt: str,
            **options: str) -> dict[str, object]:
    """Submit one job, wait for it, and return its final job object and result."""
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {stack.api_key}"}) as client:
        started = time.perf_counter()
        response = client.post(f"{stack.ingest_url}/v1/jobs", files={"files": (filename, data)},
                               data={"prompt": prompt, "max_new_tokens": "24", **options})
        response.raise_for_status()
        job = response.json()
        print(f"submitted {filename}: {job['id']} ({response.status_code}, "
              f"Location {response.headers['location']})")
        # Follow the job's server-sent events until it ends, then read it once.
        with client.stream("GET", job["links"]["events"], timeout=120) as events:
            for _ in events.iter_lines():
                pass
        job = client.get(response.headers["location"]).json()
        latency = time.perf_counter() - started
        result = client.get(job["links"]["result"]).json()
    return {"job": job, "result": result, "latency": latency}


def describe(outcome: dict[str, object]) -> str:
    """A few lines about one finished job."""
    job, result, latency = outcome["job"], outcome["result"], outcome["latency"]
    assert isinstance(job, dict) and isinstance(result, dict) and isinstance(latency, float)
    if job["status"] != "succeeded":
        return f"  job {job['id']} {job['status']}: {result}"
    timings = result["timings"]
    grids = [f"{i['cols']}x{i['rows']}{'+thumb' if i['thumbnail'] else ''}"
             for item in result["inputs"] for i in item["images"]]
    return "\n".join([
        f"  job id    {job['id']}",
        f"  trace id  {job['trace_id']}",
        f"  latency   {latency * 1000:.0f} ms from POST to the client seeing it finished",
        f"  answer    {result['text']!r}  (random weights: the words are noise)",
        f"  tiles     {', '.join(grids[:4])}{' ...' if len(grids) > 4 else ''}  "
        f"({result['usage']['visual_tokens']} visual tokens)",
        "  timings   " + ", ".join(f"{name.removesuffix('_seconds')} {value * 1000:.0f} ms"
                                   for name, value in timings.items()),
    ])


def main() -> int:
    """Run the demo; exit status 1 when a job did not succeed."""
    with LocalStack() as stack:
        print(f"ingest API  {stack.ingest_url}\nresults API {stack.results_url} "
              f"(web page at /ui)\nredis       {stack.redis_url}\nS3          "
              f"{stack.s3_endpoint}\nmodel       {stack.model_path}\nAPI key     "
              f"{stack.api_key}\n")
        outcomes = [
            run_job(stack, "landscape.jpg", sample_jpeg(), "Describe this picture."),
            run_job(stack, "clip.mp4", sample_mp4(), "What happens in this video?",
                    num_frames="8"),
        ]
    for outcome in outcomes:
        print(describe(outcome))
    return 0 if all(o["job"]["status"] == "succeeded" for o in outcomes) else 1  # type: ignore[index]


if __name__ == "__main__":
    sys.exit(main())
