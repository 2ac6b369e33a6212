module.exports = {
  apps: [{ name: 'broken', script: 'server.js', }
};
