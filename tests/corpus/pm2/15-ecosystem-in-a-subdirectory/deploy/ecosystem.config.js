module.exports = {
  apps: [{
    name: 'app',
    script: 'server.js',
    cwd: '.',
    out_file: 'logs/app-out.log',
  }],
};
