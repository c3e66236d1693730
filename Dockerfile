# The MIMS packaging job: one stdlib-only script on a slim, pinned Python.
# SageMaker Processing (or docker run) mounts the inputs and the output under /opt/ml/processing.
FROM python:3.13.9-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/program
COPY mims_package.py /opt/program/mims_package.py

ENTRYPOINT ["python3", "/opt/program/mims_package.py"]
