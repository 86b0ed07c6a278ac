# Learner image: CUDA runtime with robotd installed. The robot-side image is the same build with
# the hardware extras: docker build --build-arg EXTRAS=ur5,realsense -t robotd-robot .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG EXTRAS=""
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip libusb-1.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/robotd
COPY pyproject.toml README.md ./
COPY robotd robotd
COPY learner learner
COPY actor actor
COPY drivers drivers
COPY tools tools
COPY configs configs
COPY scripts scripts
RUN python3 -m venv /opt/robotd/.venv \
    && /opt/robotd/.venv/bin/pip install --no-cache-dir torch==2.13.0 \
    && /opt/robotd/.venv/bin/pip install --no-cache-dir -e ".${EXTRAS:+[$EXTRAS]}"
ENV PATH=/opt/robotd/.venv/bin:$PATH
EXPOSE 5555 5556
ENTRYPOINT ["robotd"]
CMD ["learner", "configs/mock_arm.yaml", "--bind", "tcp://0.0.0.0:5555", "--logdir", "/runs/learner"]
