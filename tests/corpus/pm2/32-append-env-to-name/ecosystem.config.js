module.exports = {
  apps: [{
    name: 'api',
    script: 'server.js',
    append_env_to_name: true,
    env_staging: { NODE_ENV: 'staging' },
  }],
};
