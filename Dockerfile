# U-Net Lens. CPU image by default; GPU variant: docker build --build-arg BASE=tensorflow/tensorflow:2.21.0-gpu .
# Every command here is also run by CI outside Docker (make test installs requirements.txt and
# runs the suite; the HEALTHCHECK target /healthz is tested).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 \
    UNET_LENS_HOST=0.0.0.0 UNET_LENS_PORT=8050 UNET_LENS_CACHE_DIR=/tmp/unet-lens-cache

WORKDIR /srv/unet-lens
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# Code and the shipped demo artifacts (model_store/, embeddings/) baked in.
COPY app/ app/
COPY assets/ assets/
COPY model_store/ model_store/
COPY embeddings/ embeddings/

RUN useradd --create-home --uid 10001 lens
USER 10001

EXPOSE 8050
# /healthz answers 200 when the artifacts are readable (503 with the reason otherwise); the port
# follows UNET_LENS_PORT. tests/unit/test_serve.py runs this exact command against a server.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('UNET_LENS_PORT', '8050'); sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4).status == 200 else 1)"]
# Inside a container the port must be published, so bind all interfaces there (opt-in via ENV above).
CMD ["python", "-m", "app", "serve", "--workers", "2"]
