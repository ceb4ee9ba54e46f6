# The HeteroTrain image: the operator, and the runtime (with heterotrain_contract) its init containers
# copy into workers. No test infrastructure: e2e/ is not copied, and the wheel holds none of it.
# (Not built in CI: this machine has no container engine. The e2e suite runs the same code as processes.)
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY runtime ./runtime
RUN pip install --no-cache-dir '.[operator]' && useradd -u 65532 -M heterotrain
USER 65532
ENTRYPOINT ["python", "-m", "heterotrain_operator"]
CMD ["run"]
