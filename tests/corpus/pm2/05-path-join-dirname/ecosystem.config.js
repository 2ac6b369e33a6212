const path = require('path');

module.exports = {
  apps: [
    {
      name: 'backend',
      cwd: path.join(__dirname, 'api'),
      script: 'index.js',
      error_file: path.join(__dirname, 'logs', 'backend-error.log'),
      out_file: path.join(__dirname, 'logs', 'backend-out.log'),
    },
    {
      name: 'frontend',
      cwd: path.resolve(__dirname, 'web'),
      script: './server.js',
    },
  ],
};
