export default {
  apps: [{ name: 'modern', script: 'server.mjs' }],
};
