# llama-serve for NVIDIA GPU nodes: `python -m server` on vLLM's CUDA stack.
# Build and run: README "Docker". Lint: tests/unit/test_docker.py (hadolint).
#
# Base: vLLM's own CUDA image at the release that the `gpu` extra pins (vllm==0.32.0). It
# ships CUDA, the matching PyTorch build, FlashAttention/FlashInfer kernels, NCCL and Ray,
# tested together by vLLM's CI; assembling that stack on nvidia/cuda by hand is where version
# mismatches come from. Bump this tag and the extra together.
FROM vllm/vllm-openai:v0.32.0

# Model weights (Hugging Face), our converted models and vLLM's compile cache all live in the
# /cache volume, so a restarted container downloads and compiles nothing again.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    LLAMA_SERVE_CACHE_DIR=/cache/llama-serve \
    VLLM_CACHE_ROOT=/cache/vllm \
    LLAMA_SERVE_HOST=0.0.0.0 \
    LLAMA_SERVE_PORT=8000

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server/ server/
COPY sampling/ sampling/
COPY grammars/ grammars/
COPY benchmarks/ benchmarks/
COPY configs/ configs/

# Every package the base image has is held at its version (constraints), so installing the
# project never changes vLLM's tested stack; a conflict fails the build instead. Editable, so
# that configs/ stays next to the code that reads it.
RUN python3 -m pip list --format=freeze > /tmp/base-image.txt \
    && python3 -m pip install --no-cache-dir --constraint /tmp/base-image.txt --editable ".[gpu]" \
    && rm /tmp/base-image.txt

# An unprivileged user (numeric, so Kubernetes' runAsNonRoot can check it); the code stays
# root-owned and read-only, /cache is all it writes.
RUN useradd --no-log-init --create-home --uid 10001 --user-group llama \
    && mkdir -p /cache \
    && chown llama:llama /cache
USER 10001:10001
VOLUME ["/cache"]

EXPOSE 8000
# SIGTERM drains: in-flight requests get --drain-timeout (30 s) to finish. Give `docker stop`
# more than that (--stop-timeout 60 / compose stop_grace_period) or it kills mid-drain.
STOPSIGNAL SIGTERM
# start-period: the first start downloads the weights (about 140 GB for 70B).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30m --retries=3 \
    CMD ["python3", "-m", "server.healthcheck"]

# HF_TOKEN (gated Meta weights) and LLAMA_SERVE_API_KEY come from `docker run -e`, never
# from the image. Arguments after the image name are the server's flags.
ENTRYPOINT ["python3", "-m", "server"]
CMD ["--model", "llama3.1-8b"]
