const instances = process.env.WEB_CONCURRENCY || 2;
const name = process.env.APP_NAME || 'api';

module.exports = {
  apps: [{
    name,
    script: 'server.js',
    instances,
    exec_mode: 'cluster',
    env: {
      HOME_DIR: process.env.HOME,
      NODE_ENV: process.env.NODE_ENV || 'production',
    },
  }],
};
