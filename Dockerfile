# fastpaca: one node, data in /data.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY bin ./bin
COPY runtime ./runtime
COPY actors ./actors
COPY gateway ./gateway
COPY bench ./bench
RUN npx tsc -p tsconfig.json && npm prune --omit=dev

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production PORT=4000 HOST=0.0.0.0 FASTPACA_DATA_DIR=/data
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
EXPOSE 4000
# SIGTERM drains in-flight requests and makes queued writes durable before exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "dist/bin/fastpaca.js"]
CMD ["serve"]
