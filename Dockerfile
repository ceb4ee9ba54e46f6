# The HeteroTrain image: the operator, and the runtime its init containers copy into workers.
# (Not built in CI: this machine has no container engine. The e2e suite runs the same code as processes.)
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY runtime ./runtime
COPY e2e/heterotrain_e2e ./e2e/heterotrain_e2e
COPY crds ./crds
RUN pip install --no-cache-dir '.[operator]' && useradd -u 65532 -M heterotrain
USER 65532
ENTRYPOINT ["python", "-m", "heterotrain_operator"]
CMD ["run"]
