# One image for the bridge (`epic-bridge`) and the Epic simulator (`epic-sim`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md LICENSE ./
COPY schemas ./schemas
COPY bridge ./bridge
COPY epic_sim ./epic_sim
COPY connect-configs ./connect-configs
COPY deploy/docker ./deploy/docker
RUN pip install '.[sim]' \
    && useradd --uid 10001 --create-home bridge \
    && mkdir -p /state && chown bridge /state
USER bridge
ENV EPIC_BRIDGE_STATE_DIR=/state
EXPOSE 8088 8070
ENTRYPOINT ["epic-bridge"]
CMD ["run"]
