module.exports = {
  apps: [{ name: 'as-root', script: 'server.js', uid: 'root', gid: 'root', username: 'deploy' }],
};
