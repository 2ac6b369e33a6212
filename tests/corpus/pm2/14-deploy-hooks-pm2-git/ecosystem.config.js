module.exports = {
  apps: [{
    name: 'shop',
    script: 'server.js',
    instances: 2,
    exec_mode: 'cluster',
    env_production: { NODE_ENV: 'production' },
  }],
  deploy: {
    production: {
      user: 'deploy',
      host: ['203.0.113.10', '203.0.113.11'],
      ref: 'origin/main',
      repo: 'git@github.com:acme/shop.git',
      path: '/var/www/shop',
      'pre-deploy': 'git reset --hard && git pull',
      'post-deploy': 'npm install && pm2 reload ecosystem.config.js --env production',
      'pre-setup': 'apt-get install -y git',
      ssh_options: 'StrictHostKeyChecking=yes',
      env: { NODE_ENV: 'production' },
    },
    staging: {
      user: 'deploy',
      host: 'staging.example.com',
      ref: 'origin/develop',
      repo: 'git@github.com:acme/shop.git',
      path: '/var/www/shop-staging',
      'post-deploy': 'npm ci && pm2 startOrRestart ecosystem.config.js --env staging && pm2 save',
    },
  },
};
